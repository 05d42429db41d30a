//! Ethernet MAC addresses: [`MacAddr`], parsed strictly from and shown as the lowercase
//! colon form `aa:bb:cc:dd:ee:ff`, (de)serialised with serde as that string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: want six two-digit hex octets separated by ':' (aa:bb:cc:dd:ee:ff)")]
pub struct MacParseError {
    /// The rejected input.
    pub input: String,
}

impl MacAddr {
    /// From raw octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    /// The raw octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// From a 6-byte slice (e.g. a netlink attribute); `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }

    /// Usable as a unicast link address: the I/G (multicast) bit is clear and it is not all
    /// zeros. Broadcast `ff:ff:ff:ff:ff:ff` is multicast, so it is not unicast either.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }

    /// The I/G bit is set (includes broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 == 1
    }

    /// The U/L bit is set (locally administered, as kernel-random macvlan addresses are).
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 == 0x02
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError { input: s.to_string() };
        let b = s.as_bytes();
        if b.len() != 17 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (i, o) in out.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && b[at - 1] != b':' {
                return Err(err());
            }
            let hi = hex(b[at]).ok_or_else(err)?;
            let lo = hex(b[at + 1]).ok_or_else(err)?;
            *o = (hi << 4) | lo;
        }
        Ok(MacAddr(out))
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(o: [u8; 6]) -> Self {
        MacAddr(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_canonical_and_uppercase_and_displays_lowercase() {
        let m: MacAddr = "C2:11:22:33:44:5f".parse().expect("valid");
        assert_eq!(m.octets(), [0xc2, 0x11, 0x22, 0x33, 0x44, 0x5f]);
        assert_eq!(m.to_string(), "c2:11:22:33:44:5f");
    }

    #[test]
    fn mac_rejects_every_other_form() {
        for bad in [
            "",
            "c2:11:22:33:44",
            "c2:11:22:33:44:55:66",
            "c2-11-22-33-44-55",
            "c211.2233.4455",
            "c2112233445f",
            "c2:11:22:33:44:5g",
            "c2:11:22:33:44:5",
            "c2:11:22:33:44:555",
            " c2:11:22:33:44:55",
            "c2:11:22:33:44:55 ",
            "c2::1:22:33:44:55",
            "+2:11:22:33:44:55",
            "00:00:5e:00:53:01:00:00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn mac_unicast_check_rejects_multicast_broadcast_and_zero() {
        assert!("c2:11:22:33:44:55".parse::<MacAddr>().expect("ok").is_unicast());
        assert!("02:00:00:00:00:01".parse::<MacAddr>().expect("ok").is_local());
        assert!(!"01:00:5e:00:00:01".parse::<MacAddr>().expect("ok").is_unicast());
        assert!(!"ff:ff:ff:ff:ff:ff".parse::<MacAddr>().expect("ok").is_unicast());
        assert!(!"00:00:00:00:00:00".parse::<MacAddr>().expect("ok").is_unicast());
        assert!("33:33:00:00:00:01".parse::<MacAddr>().expect("ok").is_multicast());
    }

    #[test]
    fn mac_serde_is_a_string_and_rejects_bad_strings() {
        let m = MacAddr([0xaa, 0xbb, 0xcc, 0, 1, 2]);
        let j = serde_json::to_string(&m).expect("ser");
        assert_eq!(j, "\"aa:bb:cc:00:01:02\"");
        let back: MacAddr = serde_json::from_str(&j).expect("de");
        assert_eq!(back, m);
        assert!(serde_json::from_str::<MacAddr>("\"aa:bb\"").is_err());
        assert!(serde_json::from_str::<MacAddr>("[1,2,3,4,5,6]").is_err());
    }

    #[test]
    fn mac_from_slice_requires_six_bytes() {
        assert!(MacAddr::from_slice(&[1, 2, 3, 4, 5]).is_none());
        assert_eq!(
            MacAddr::from_slice(&[1, 2, 3, 4, 5, 6]),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
    }
}
