//! API keys: clients present `Authorization: Bearer <key>`; the gateway keeps
//! only SHA-256 hashes and compares them in constant time.

use std::collections::HashSet;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ClientSettings;

/// A configured client.
pub struct Client {
    pub id: String,
    key_hash: [u8; 32],
    employers: HashSet<String>,
}

impl Client {
    pub fn from_settings(s: &ClientSettings) -> Option<Client> {
        Some(Client {
            id: s.id.clone(),
            key_hash: s.key_hash()?,
            employers: s.employers.iter().cloned().collect(),
        })
    }

    pub fn may_publish_for(&self, employer_id: &str) -> bool {
        self.employers.contains(employer_id)
    }
}

/// The client whose key the request carries, if any. Every configured hash
/// is compared (in constant time), so timing does not reveal which matched.
pub fn authenticate<'a>(clients: &'a [Client], headers: &HeaderMap) -> Option<&'a Client> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let mut found = None;
    for client in clients {
        if bool::from(client.key_hash.ct_eq(&presented)) {
            found = Some(client);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hash_api_key;

    fn client(id: &str, key: &str) -> Client {
        Client::from_settings(&ClientSettings {
            id: id.into(),
            api_key_sha256: hash_api_key(key),
            employers: vec!["acme".into()],
        })
        .unwrap()
    }

    #[test]
    fn only_the_right_key_authenticates() {
        let clients = [client("a", "key-a"), client("b", "key-b")];
        let mut h = HeaderMap::new();
        assert!(authenticate(&clients, &h).is_none());
        h.insert("authorization", "Bearer key-b".parse().unwrap());
        assert_eq!(authenticate(&clients, &h).map(|c| c.id.as_str()), Some("b"));
        h.insert("authorization", "Bearer key-c".parse().unwrap());
        assert!(authenticate(&clients, &h).is_none());
        h.insert("authorization", "BEARER key-a".parse().unwrap());
        assert_eq!(
            authenticate(&clients, &h).map(|c| c.id.as_str()),
            Some("a"),
            "the scheme is case-insensitive"
        );
        h.insert("authorization", "Basic a2V5LWE=".parse().unwrap());
        assert!(authenticate(&clients, &h).is_none());
        assert!(clients[0].may_publish_for("acme") && !clients[0].may_publish_for("globex"));
    }
}
