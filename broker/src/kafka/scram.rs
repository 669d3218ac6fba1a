//! SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, RFC 7677) and SASL PLAIN verification, sans-IO.
//!
//! The server side is a small state machine, [`ServerExchange`]: feed it the client-first
//! message, send back what it returns, feed it the client-final message. It never sees a
//! password — only the stored credential (salt, iterations, StoredKey, ServerKey) — and draws
//! no randomness itself (the server nonce is passed in), so it is tested against the RFC
//! vectors. The client side ([`client_first`], [`ClientExchange`]) is used by the CLI.
//!
//! *Secrets:* nothing here implements `Debug` on a password or a key; errors never say whether
//! a user exists.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use strata_meta::{ScramCredential, ScramMechanism};

/// Kafka's floor for SCRAM iterations (and RFC 7677's recommendation).
pub const ITERATIONS_MIN: u32 = 4096;
/// A cap so a stored credential cannot make one login cost minutes of CPU.
pub const ITERATIONS_MAX: u32 = 16384;
/// Longest SASL token we accept (a SCRAM message or a PLAIN token).
pub const TOKEN_BYTES_MAX: usize = 4096;

/// Why an exchange failed. The text goes to the log, never to the client (which gets one
/// generic message whatever the reason).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SASL message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("SASL extensions (delegation tokens) are not supported")]
    Extensions,
    #[error("nonce mismatch")]
    Nonce,
    #[error("invalid credentials")]
    BadProof,
    #[error("server signature mismatch")]
    ServerSignature,
}

fn hmac(mech: ScramMechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    match mech {
        ScramMechanism::Sha256 => {
            let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        ScramMechanism::Sha512 => {
            let mut m = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

fn hash(mech: ScramMechanism, data: &[u8]) -> Vec<u8> {
    match mech {
        ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
        ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// RFC 5802 `Hi()`: PBKDF2 with HMAC as the PRF and one output block.
pub fn salted_password(mech: ScramMechanism, password: &[u8], salt: &[u8], i: u32) -> Vec<u8> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(mech, password, &first);
    let mut out = u.clone();
    for _ in 1..i {
        u = hmac(mech, password, &u);
        for (o, x) in out.iter_mut().zip(&u) {
            *o ^= x;
        }
    }
    out
}

/// The credential a password yields with `salt` and `iterations` (what metadata stores).
pub fn credential(
    mech: ScramMechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> ScramCredential {
    let salted = salted_password(mech, password, salt, iterations);
    credential_from_salted(mech, &salted, salt, iterations)
}

/// The credential from an already salted password (what AlterUserScramCredentials carries).
pub fn credential_from_salted(
    mech: ScramMechanism,
    salted: &[u8],
    salt: &[u8],
    iterations: u32,
) -> ScramCredential {
    let client_key = hmac(mech, salted, b"Client Key");
    ScramCredential {
        salt: salt.to_vec(),
        iterations,
        stored_key: hash(mech, &client_key),
        server_key: hmac(mech, salted, b"Server Key"),
    }
}

/// Equality in time independent of where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies a password against a stored credential (SASL PLAIN).
pub fn verify_password(mech: ScramMechanism, cred: &ScramCredential, password: &[u8]) -> bool {
    let derived = credential(mech, password, &cred.salt, cred.iterations);
    ct_eq(&derived.stored_key, &cred.stored_key)
}

/// A credential for a user that does not exist: deterministic per user (so repeated attempts
/// see the same salt) and unusable (no password hashes to its StoredKey but with negligible
/// probability). Lets an unknown user fail at the same step, in the same way, as a wrong
/// password.
pub fn decoy_credential(mech: ScramMechanism, secret: &[u8], user: &str) -> ScramCredential {
    let salt = hmac(mech, secret, user.as_bytes())[..16].to_vec();
    ScramCredential {
        salt,
        iterations: ITERATIONS_MIN,
        stored_key: hmac(mech, secret, b"decoy stored key"),
        server_key: hmac(mech, secret, b"decoy server key"),
    }
}

/// Parses a SASL PLAIN token: `[authzid] NUL authcid NUL passwd`. Returns (user, password).
pub fn parse_plain(token: &[u8]) -> Result<(&str, &[u8]), ScramError> {
    let mut parts = token.splitn(3, |b| *b == 0);
    let authzid = parts.next().ok_or(ScramError::Malformed("PLAIN token"))?;
    let user = parts.next().ok_or(ScramError::Malformed("PLAIN token"))?;
    let password = parts.next().ok_or(ScramError::Malformed("PLAIN token"))?;
    let user = std::str::from_utf8(user).map_err(|_| ScramError::Malformed("PLAIN user"))?;
    if user.is_empty() || (!authzid.is_empty() && authzid != user.as_bytes()) {
        return Err(ScramError::Malformed("PLAIN authorization id"));
    }
    Ok((user, password))
}

/// RFC 5802 `saslname` decoding: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("user name escape")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn encode_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

/// The client-first message, parsed.
#[derive(Debug)]
pub struct ClientFirst {
    pub user: String,
    gs2_header: String,
    bare: String,
    nonce: String,
}

/// Parses `gs2-header client-first-message-bare`.
pub fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, ScramError> {
    let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let mut it = msg.splitn(3, ',');
    let cb = it.next().ok_or(ScramError::Malformed("client-first"))?;
    let authzid = it.next().ok_or(ScramError::Malformed("client-first"))?;
    let bare = it.next().ok_or(ScramError::Malformed("client-first"))?;
    match cb {
        "n" | "y" => {}
        c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("gs2 channel-binding flag")),
    }
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(ScramError::Malformed("gs2 authzid"));
    }
    let gs2_header = format!("{cb},{authzid},");
    let mut user = None;
    let mut nonce = None;
    for (n, attr) in bare.split(',').enumerate() {
        match (n, attr.split_at_checked(2)) {
            (0, Some(("n=", v))) => user = Some(decode_saslname(v)?),
            (1, Some(("r=", v))) => nonce = Some(v.to_string()),
            (0 | 1, _) => return Err(ScramError::Malformed("client-first attributes")),
            // Kafka's extensions (`tokenauth=true` for delegation tokens) follow the nonce.
            (_, _) => return Err(ScramError::Extensions),
        }
    }
    let (Some(user), Some(nonce)) = (user, nonce) else {
        return Err(ScramError::Malformed("client-first attributes"));
    };
    if user.is_empty() || nonce.is_empty() || nonce.contains(',') {
        return Err(ScramError::Malformed("empty user or nonce"));
    }
    if let Some(a) = authzid.strip_prefix("a=") {
        if decode_saslname(a)? != user {
            return Err(ScramError::Malformed("authorization id differs from user"));
        }
    }
    Ok(ClientFirst {
        user,
        gs2_header,
        bare: bare.to_string(),
        nonce,
    })
}

/// The server side between its first and its final message.
pub struct ServerExchange {
    mech: ScramMechanism,
    cred: ScramCredential,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    /// The client's part of `nonce`.
    client_nonce: String,
    nonce: String,
}

impl ServerExchange {
    /// Starts an exchange for a parsed client-first message with the user's credential (or a
    /// decoy) and a fresh printable server nonce. Returns the exchange and the server-first
    /// message.
    pub fn start(
        mech: ScramMechanism,
        first: ClientFirst,
        cred: ScramCredential,
        server_nonce: &str,
    ) -> (Self, String) {
        let nonce = format!("{}{}", first.nonce, server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&cred.salt),
            cred.iterations
        );
        let ex = Self {
            mech,
            cred,
            client_first_bare: first.bare,
            server_first: server_first.clone(),
            gs2_header: first.gs2_header,
            client_nonce: first.nonce,
            nonce,
        };
        (ex, server_first)
    }

    /// Checks the client-final message; on success returns the server-final message.
    pub fn finish(self, msg: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("client-final without proof"))?;
        let mut it = without_proof.split(',');
        let cbind = it
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("client-final channel binding"))?;
        let nonce = it
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("client-final nonce"))?;
        if it.next().is_some() {
            return Err(ScramError::Extensions);
        }
        if cbind != B64.encode(self.gs2_header.as_bytes()) {
            return Err(ScramError::ChannelBinding);
        }
        // librdkafka before 2.6.1 (librdkafka#4895) prepends its client nonce once more:
        // `r=<c-nonce><c-nonce><s-nonce>`. Kafka 3.8.1-3.9 accepted that (`endsWith`); we
        // accept exactly that form too, so kcat and older bindings can log in. It still
        // carries our fresh server nonce, so the exchange stays bound to this session.
        let legacy = format!("{}{}", self.client_nonce, self.nonce);
        if !ct_eq(nonce.as_bytes(), self.nonce.as_bytes())
            && !ct_eq(nonce.as_bytes(), legacy.as_bytes())
        {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(self.mech, &self.cred.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(ScramError::BadProof);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        if !ct_eq(&hash(self.mech, &client_key), &self.cred.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(self.mech, &self.cred.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// The client-first message for `user` with `nonce`.
pub fn client_first(user: &str, nonce: &str) -> String {
    format!("n,,n={},r={nonce}", encode_saslname(user))
}

/// The client side after its first message (used by the CLI).
pub struct ClientExchange {
    pub mech: ScramMechanism,
    pub client_first_bare: String,
    pub nonce: String,
}

impl ClientExchange {
    /// Answers the server-first message: returns the client-final message and the server
    /// signature to expect in the server-final message.
    pub fn respond(
        &self,
        password: &[u8],
        server_first: &[u8],
    ) -> Result<(String, String), ScramError> {
        let sf =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in sf.split(',') {
            match attr.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = B64.decode(v).ok(),
                Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(i)) = (nonce, salt, iterations) else {
            return Err(ScramError::Malformed("server-first"));
        };
        if !nonce.starts_with(&self.nonce) || !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&i) {
            return Err(ScramError::Nonce);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{sf},{without_proof}", self.client_first_bare);
        let salted = salted_password(self.mech, password, &salt, i);
        let client_key = hmac(self.mech, &salted, b"Client Key");
        let stored_key = hash(self.mech, &client_key);
        let signature = hmac(self.mech, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(self.mech, &salted, b"Server Key");
        let server_signature = hmac(self.mech, &server_key, auth_message.as_bytes());
        Ok((
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(server_signature)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3: the SCRAM-SHA-256 example exchange.
    #[test]
    fn rfc7677_sha256_vector() {
        let mech = ScramMechanism::Sha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = credential(mech, b"pencil", &salt, 4096);
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.user, "user");
        let (ex, server_first) =
            ServerExchange::start(mech, first, cred.clone(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let server_final = ex.finish(client_final.as_bytes()).unwrap();
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // The client side computes the same messages.
        let client = ClientExchange {
            mech,
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
        };
        let (cf, sig) = client.respond(b"pencil", server_first.as_bytes()).unwrap();
        assert_eq!(cf, client_final);
        assert_eq!(sig, server_final);
        assert!(verify_password(mech, &cred, b"pencil"));
        assert!(!verify_password(mech, &cred, b"pencil2"));
    }

    /// A full SHA-512 round trip, and a wrong password refused at the proof.
    #[test]
    fn sha512_round_trip_and_wrong_password() {
        let mech = ScramMechanism::Sha512;
        let cred = credential(mech, b"s3cret", b"0123456789abcdef", 4096);
        for (password, ok) in [(&b"s3cret"[..], true), (&b"wrong"[..], false)] {
            let cf = client_first("al,i=ce", "cnonce");
            let first = parse_client_first(cf.as_bytes()).unwrap();
            assert_eq!(first.user, "al,i=ce");
            let (ex, sf) = ServerExchange::start(mech, first, cred.clone(), "snonce");
            let client = ClientExchange {
                mech,
                client_first_bare: cf[3..].to_string(),
                nonce: "cnonce".into(),
            };
            let (final_msg, sig) = client.respond(password, sf.as_bytes()).unwrap();
            match ex.finish(final_msg.as_bytes()) {
                Ok(v) => {
                    assert!(ok);
                    assert_eq!(v, sig);
                }
                Err(e) => {
                    assert!(!ok);
                    assert_eq!(e, ScramError::BadProof);
                }
            }
        }
    }

    /// librdkafka < 2.6.1 repeats its client nonce in the final message; accepted. Any other
    /// nonce is refused before the proof is looked at.
    #[test]
    fn final_nonce_forms() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, b"pw", b"salt-salt", 4096);
        for (echo, ok) in [
            ("cnsn", true),
            ("cncnsn", true),
            ("cn", false),
            ("xcnsn", false),
        ] {
            let first = parse_client_first(b"n,,n=u,r=cn").unwrap();
            let (ex, sf) = ServerExchange::start(mech, first, cred.clone(), "sn");
            // The client signs what it sends, as librdkafka does.
            let without_proof = format!("c=biws,r={echo}");
            let auth = format!("n=u,r=cn,{sf},{without_proof}");
            let salted = salted_password(mech, b"pw", b"salt-salt", 4096);
            let client_key = hmac(mech, &salted, b"Client Key");
            let sig = hmac(mech, &hash(mech, &client_key), auth.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(k, s)| k ^ s).collect();
            let final_msg = format!("{without_proof},p={}", B64.encode(proof));
            let got = ex.finish(final_msg.as_bytes());
            assert_eq!(got.is_ok(), ok, "{echo}: {got:?}");
            if !ok {
                assert_eq!(got.unwrap_err(), ScramError::Nonce);
            }
        }
    }

    #[test]
    fn client_first_errors() {
        let cases: &[(&[u8], ScramError)] = &[
            (b"p=tls-unique,,n=u,r=x", ScramError::ChannelBinding),
            (b"n,,n=u,r=x,tokenauth=true", ScramError::Extensions),
            (
                b"n,,r=x,n=u",
                ScramError::Malformed("client-first attributes"),
            ),
            (b"n,,n=a=b,r=x", ScramError::Malformed("user name escape")),
            (b"n,,", ScramError::Malformed("client-first attributes")),
            (
                b"q,,n=u,r=x",
                ScramError::Malformed("gs2 channel-binding flag"),
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(parse_client_first(msg).unwrap_err(), *want, "{msg:?}");
        }
    }

    #[test]
    fn plain_tokens() {
        assert_eq!(parse_plain(b"\0bob\0pw").unwrap(), ("bob", &b"pw"[..]));
        assert_eq!(parse_plain(b"bob\0bob\0pw").unwrap(), ("bob", &b"pw"[..]));
        assert!(parse_plain(b"eve\0bob\0pw").is_err());
        assert!(parse_plain(b"bob").is_err());
        assert!(parse_plain(b"\0\0pw").is_err());
    }
}
