//! Small validators and codecs shared by the modules: DNS-1123 names, interface names, Go's
//! `net.ParseMAC`, edit distance, standard base64 (Go's `encoding/json` form of `[]byte`), and
//! Go's HTML-safe JSON string escaping, and the container-id check for per-container files.

/// DNS-1123 label: `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63 bytes.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().copied().is_some_and(alnum)
        && b.last().copied().is_some_and(alnum)
        && b.iter().all(|&c| alnum(c) || c == b'-')
}

/// The label regex alone, without the 63-byte cap (what Multus' comma-form check tests).
pub(crate) fn matches_label_regex(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.first().copied().is_some_and(alnum)
        && b.last().copied().is_some_and(alnum)
        && b.iter().all(|&c| alnum(c) || c == b'-')
}

/// DNS-1123 subdomain (Kubernetes object names): dot-separated labels, at most 253 bytes.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(matches_label_regex)
}

/// Why a Linux interface name is invalid, or `None` when it is valid (kernel `dev_valid_name`).
pub(crate) fn ifname_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("is empty")
    } else if s.len() > 15 {
        Some("is longer than 15 bytes (the kernel's IFNAMSIZ limit)")
    } else if s == "." || s == ".." {
        Some("is `.` or `..`")
    } else if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    }
}

/// Go's `net.ParseMAC`: 6-, 8- or 20-byte addresses written as `xx:xx:…`, `xx-xx-…` or
/// `xxxx.xxxx.…`.
pub(crate) fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let valid_len = |n: usize| n == 6 || n == 8 || n == 20;
    let hex = |p: &str| -> Option<Vec<u8>> {
        if !p.len().is_multiple_of(2) || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        (0..p.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(p.get(i..i + 2)?, 16).ok())
            .collect()
    };
    let bytes: Vec<u8> = if s.len() >= 14 && s.as_bytes().get(4) == Some(&b'.') {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.iter().any(|p| p.len() != 4) {
            return None;
        }
        parts.iter().map(|p| hex(p)).collect::<Option<Vec<_>>>()?.concat()
    } else if s.len() >= 14 && matches!(s.as_bytes().get(2), Some(b':') | Some(b'-')) {
        let sep = if s.as_bytes().get(2) == Some(&b':') {
            ':'
        } else {
            '-'
        };
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.iter().any(|p| p.len() != 2) {
            return None;
        }
        parts.iter().map(|p| hex(p)).collect::<Option<Vec<_>>>()?.concat()
    } else {
        return None;
    };
    valid_len(bytes.len()).then_some(bytes)
}

/// Levenshtein distance (case-insensitive), for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `word`.
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates.iter().min_by_key(|c| edit_distance(word, c)).copied()
}

#[cfg(test)]
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

#[cfg(test)]
/// Standard base64 with padding (Go's `base64.StdEncoding`, used for `[]byte` in JSON).
pub(crate) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64; padding is optional, whitespace is refused.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    // A single leftover sextet cannot encode a byte.
    if s.len() % 4 == 1 {
        return None;
    }
    Some(out)
}

/// Escapes `<`, `>`, `&`, U+2028 and U+2029 as Go's `encoding/json` does by default. Safe on
/// whole JSON documents: these characters can only occur inside strings.
pub(crate) fn go_html_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Checks that a container id can name a file (`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`: no `/`, no
/// `..`), for the per-container files `what` names.
pub(crate) fn container_file_name(what: &'static str, container_id: &str) -> Result<(), crate::error::Error> {
    netattach_cni::env::validate_container_id(container_id).map_err(|e| {
        crate::error::Error::Config(
            crate::error::ConfigError::new(
                what,
                "CNI_CONTAINERID",
                Some(container_id.to_string()),
                "is not a safe file name",
                "the runtime must pass an id matching ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
            )
            .with_code(e.code),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        for ok in ["a", "net-a", "0", "a1-b2"] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("storage.v1"));
        assert!(!is_dns1123_subdomain("storage..v1"));
    }

    #[test]
    fn ifnames() {
        assert_eq!(ifname_problem("lhnet1"), None);
        assert_eq!(ifname_problem("123456789012345"), None);
        assert!(ifname_problem("1234567890123456").is_some());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb"] {
            assert!(ifname_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn macs_like_go() {
        assert_eq!(parse_mac("c2:11:22:33:44:55").map(|m| m.len()), Some(6));
        assert_eq!(parse_mac("C2-11-22-33-44-55").map(|m| m.len()), Some(6));
        assert_eq!(parse_mac("c211.2233.4455").map(|m| m.len()), Some(6));
        assert_eq!(parse_mac("00:00:00:00:00:00:00:01").map(|m| m.len()), Some(8));
        let ib = "00:00:04:00:07:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01";
        assert_eq!(parse_mac(ib).map(|m| m.len()), Some(20));
        for bad in [
            "",
            "c2:11:22:33:44",
            "c2:11:22:33:44:5g",
            "c2:11-22:33:44:55",
            "c21122334455",
        ] {
            assert!(parse_mac(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("confdir", "confDir"), 0);
        assert_eq!(edit_distance("clusterNetwrk", "clusterNetwork"), 1);
        assert_eq!(nearest("bindir2", &["binDir", "cniDir"]), Some("binDir"));
    }

    #[test]
    fn base64_round_trip() {
        for data in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            b"{\"a\":1}",
        ] {
            let enc = base64_encode(data);
            assert_eq!(base64_decode(&enc).as_deref(), Some(data), "{enc}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert!(base64_decode("Zm9v!").is_none());
        assert!(base64_decode("Z").is_none());
    }

    #[test]
    fn html_escape() {
        assert_eq!(go_html_escape(r#"{"a":"<&>"}"#), r#"{"a":"\u003c\u0026\u003e"}"#);
    }
}
