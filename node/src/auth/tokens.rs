//! API tokens: `mrd_<id>_<secret>`, where the id (16 hex digits) names the
//! token's record in the metadata document and the secret (64 hex digits, 256
//! random bits) is shown once, at creation. Only the SHA-256 of the whole
//! token is stored. The root credential is `mrd_root_<secret>`; its hash is
//! in each region's configuration (`[auth] root_token_sha256`), never in the
//! replicated document, the way Consul's initial management token is.

use ring::digest;
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "mrd_";
pub const ROOT_ID: &str = "root";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A token as stored (`token/<id>`): everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub principal: String,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    pub created_ms: u64,
    /// Wall-clock expiry (milliseconds since the epoch); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// The one project the token may act in; none: every project its roles allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Roles the token carries (besides those granted to its principal).
    #[serde(default)]
    pub roles: Vec<String>,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a token.
pub fn sha256_hex(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// A new random token with the given id (`ROOT_ID` for the root credential).
pub fn generate(id: &str) -> String {
    let secret: [u8; SECRET_HEX / 2] = rand::random();
    format!("{PREFIX}{id}_{}", hex(&secret))
}

/// A fresh token id.
pub fn new_id() -> String {
    let id: [u8; ID_HEX / 2] = rand::random();
    hex(&id)
}

/// The id of a well-formed token; None if it is not one (garbled).
pub fn parse_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id == ROOT_ID || (id.len() == ID_HEX && id.bytes().all(|b| b.is_ascii_hexdigit()));
    let secret_ok = secret.len() == SECRET_HEX && secret.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && secret_ok).then_some(id)
}

/// Whether `token` hashes to `sha256` (hex), compared in constant time and
/// without allocating (it runs on every request).
pub fn matches(token: &str, sha256: &str) -> bool {
    let got = digest::digest(&digest::SHA256, token.as_bytes());
    let want = sha256.as_bytes();
    if want.len() != got.as_ref().len() * 2 {
        return false;
    }
    let nibble = |c: u8| -> Option<u8> { (c as char).to_digit(16).map(|d| d as u8) };
    let mut diff = 0u8;
    for (i, b) in got.as_ref().iter().enumerate() {
        match (nibble(want[2 * i]), nibble(want[2 * i + 1])) {
            (Some(h), Some(l)) => diff |= b ^ (h << 4 | l),
            _ => return false,
        }
    }
    diff == 0
}

/// Parse a duration such as `30d`, `12h`, `45m`, `90s` into milliseconds.
pub fn parse_ttl_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: a number and a unit (s, m, h, d)"))?;
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("bad duration {s:?}: the unit is s, m, h or d")),
    };
    if n == 0 {
        return Err(format!("bad duration {s:?}: must be above 0"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("bad duration {s:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_match_only_their_hash() {
        let id = new_id();
        let t = generate(&id);
        assert_eq!(parse_id(&t), Some(id.as_str()));
        let h = sha256_hex(&t);
        assert!(matches(&t, &h));
        assert!(matches(&t, &h.to_uppercase()));
        let other = generate(&id);
        assert!(!matches(&other, &h));
        assert_eq!(parse_id(&generate(ROOT_ID)), Some(ROOT_ID));
        for bad in [
            "",
            "mrd_",
            "Bearer x",
            "mrd_zz_00",
            &t[..t.len() - 1],
            &t.replace("mrd_", "mrx_"),
            &format!("{t}0"),
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_ttl_ms("90s"), Ok(90_000));
        for bad in ["", "d", "10", "10w", "0h", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl_ms(bad).is_err(), "{bad:?}");
        }
    }
}
