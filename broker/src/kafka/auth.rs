//! Kafka listener security: TLS, SASL authentication (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and
//! the SCRAM user APIs (DescribeUserScramCredentials, AlterUserScramCredentials).
//!
//! [`Security`] is the validated `kafka.tls_*` / `kafka.sasl_*` config. Each connection has a
//! [`Session`]: with SASL on, a connection may send ApiVersions, SaslHandshake and
//! SaslAuthenticate until it is authenticated; any other request closes it (Kafka's
//! behaviour). A failed authentication is answered `SASL_AUTHENTICATION_FAILED` with one
//! message whatever the cause — an unknown user runs the same SCRAM exchange against a decoy
//! credential and fails at the same step as a wrong password — and the connection is closed.
//! SaslHandshake v0 is followed by raw SASL tokens (size-prefixed, no Kafka header); v1 by
//! SaslAuthenticate requests.
//!
//! Users live in metadata as SCRAM credentials (`strata_meta::ScramCredential`): salt,
//! iterations, StoredKey and ServerKey, never a password. PLAIN is checked against the user's
//! SCRAM-SHA-512 credential (else SCRAM-SHA-256) by deriving StoredKey from the password.
//!
//! *mTLS.* With `kafka.tls_client_auth` = `requested` or `required`, rustls's
//! `WebPkiClientVerifier` checks client certificates against `kafka.tls_client_ca`. Without
//! SASL the connection's principal is the certificate's subject mapped by
//! `kafka.tls_principal_mapping` (`kafka::principal`); with SASL the SASL user wins.
//! `kafka.tls_client_crl` adds certificate revocation lists: a revoked client certificate (or
//! one whose issuer has no CRL in the file: fail closed) fails the handshake. The file is
//! re-read when its modification time or size changes, checked at a new connection at most
//! every [`CRL_CHECK_INTERVAL`], so a CA publishing a new CRL needs no restart; a file that no
//! longer parses is logged and the last good lists stay in force.
//!
//! *Re-authentication (KIP-368).* With `kafka.connections_max_reauth_ms` > 0, SaslAuthenticate
//! v1+ answers that `session_lifetime_ms` (SCRAM and PLAIN credentials carry no lifetime of
//! their own). A connection whose session has expired is closed at its next request unless
//! that request is a SaslHandshake, which starts a re-authentication on the live connection:
//! same mechanism, same user (Kafka refuses a change of principal), credentials checked
//! afresh — a deleted user fails and the connection closes. Requests other than SASL ones
//! during a re-authentication close the connection, as Kafka does.
//!
//! *Secrets:* passwords, salted passwords and keys are never logged; `Security` prints no key.

use super::errors;
use super::scram::{self, ClientFirst, ServerExchange};
use crate::config::KafkaSection;
use crate::metrics::Metrics;
use crate::node::Node;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse, RequestHeader,
    RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError as E;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_meta::{Command, CommandResult, Rejection, ScramCredential, ScramMechanism};
use tokio_rustls::rustls;

/// A SASL mechanism this broker can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(ScramMechanism),
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            _ => ScramMechanism::from_name(name).map(Mechanism::Scram),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }
}

/// Kafka's wire code of a SCRAM mechanism (`ScramMechanism` in the admin API).
pub fn mechanism_code(m: ScramMechanism) -> i8 {
    match m {
        ScramMechanism::Sha256 => 1,
        ScramMechanism::Sha512 => 2,
    }
}

pub fn mechanism_from_code(code: i8) -> Option<ScramMechanism> {
    match code {
        1 => Some(ScramMechanism::Sha256),
        2 => Some(ScramMechanism::Sha512),
        _ => None,
    }
}

/// The validated security settings of the Kafka listener.
#[derive(Clone)]
pub struct Security {
    /// The listener's TLS (`kafka.tls_*`), if any.
    pub tls: ListenerTls,
    /// Empty: no authentication.
    pub mechanisms: Vec<Mechanism>,
    /// A client certificate's subject DN to a principal name (mTLS without SASL).
    pub principal_mapping: super::principal::PrincipalMapping,
    /// KIP-368: how long a SASL session lasts before re-authentication; `None`: forever.
    pub session_lifetime: Option<Duration>,
}

/// `kafka.tls_client_auth` (and `mqtt.tls_client_auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Requested,
    Required,
}

impl ClientAuth {
    pub fn parse(s: &str) -> Option<ClientAuth> {
        match s {
            "none" => Some(ClientAuth::None),
            "requested" => Some(ClientAuth::Requested),
            "required" => Some(ClientAuth::Required),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.tls.is_some())
            .field("mechanisms", &self.mechanisms)
            .field("client_auth", &self.tls.client_auth)
            .field("session_lifetime", &self.session_lifetime)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Checks and loads `kafka.tls_*` and `kafka.sasl_*`. The error names the offending key.
    pub fn from_config(k: &KafkaSection) -> Result<Self, (&'static str, String)> {
        let tls = ListenerTls::from_settings(&TlsSettings {
            cert: k.tls_cert_file.as_deref(),
            key: k.tls_key_file.as_deref(),
            client_auth: &k.tls_client_auth,
            client_ca: k.tls_client_ca.as_deref(),
            client_crl: k.tls_client_crl.as_deref(),
        })?;
        let principal_mapping = super::principal::PrincipalMapping::parse(&k.tls_principal_mapping)
            .map_err(|e| ("kafka.tls_principal_mapping", e))?;
        let mut mechanisms = Vec::new();
        for name in &k.sasl_mechanisms {
            let m = Mechanism::parse(name.trim()).ok_or_else(|| {
                (
                    "kafka.sasl_mechanisms",
                    format!(
                        "unknown mechanism `{name}`; expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                    ),
                )
            })?;
            if !mechanisms.contains(&m) {
                mechanisms.push(m);
            }
        }
        if mechanisms.contains(&Mechanism::Plain) && tls.tls.is_none() && !k.sasl_plain_without_tls
        {
            return Err((
                "kafka.sasl_mechanisms",
                "PLAIN sends passwords in clear without TLS: set kafka.tls_cert_file and \
                 kafka.tls_key_file, or kafka.sasl_plain_without_tls = true"
                    .into(),
            ));
        }
        let session_lifetime = (k.connections_max_reauth_ms > 0)
            .then(|| Duration::from_millis(k.connections_max_reauth_ms));
        Ok(Self {
            tls,
            mechanisms,
            principal_mapping,
            session_lifetime,
        })
    }

    /// The principal name (without `User:`) of a connection from its verified client
    /// certificate chain, leaf first; `Ok(None)` without a certificate. An error closes the
    /// connection (a subject no mapping rule matches, as Kafka refuses it).
    pub fn certificate_principal(
        &self,
        chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Result<Option<String>, String> {
        let Some(leaf) = chain.and_then(|c| c.first()) else {
            return Ok(None);
        };
        let dn = super::principal::subject_dn(leaf)
            .ok_or_else(|| "client certificate subject does not parse".to_string())?;
        self.principal_mapping
            .apply(&dn)
            .map(Some)
            .ok_or_else(|| format!("no kafka.tls_principal_mapping rule applies to `{dn}`"))
    }

    pub fn sasl_enabled(&self) -> bool {
        !self.mechanisms.is_empty()
    }

    /// The TLS acceptor for a new connection (see [`ListenerTls::acceptor`]).
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.acceptor()
    }
}

/// A listener's TLS settings as configured (the `kafka.tls_*` keys; `mqtt.tls_*` name the
/// same through [`ListenerTls::for_mqtt`]).
pub struct TlsSettings<'a> {
    pub cert: Option<&'a std::path::Path>,
    pub key: Option<&'a std::path::Path>,
    /// `none`, `requested` or `required`.
    pub client_auth: &'a str,
    pub client_ca: Option<&'a std::path::Path>,
    pub client_crl: Option<&'a std::path::Path>,
}

/// A listener's validated TLS: its acceptor (with a client certificate verifier when asked
/// for) and, with a CRL file, what rebuilds the acceptor when the file changes.
#[derive(Clone)]
pub struct ListenerTls {
    /// Present when the listener speaks TLS (with a CRL file, as at start-up: see
    /// [`ListenerTls::acceptor`]).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    crl: Option<Arc<CrlReload>>,
    pub client_auth: ClientAuth,
}

impl ListenerTls {
    /// Checks and loads the settings; the error names the offending `kafka.*` key.
    pub fn from_settings(t: &TlsSettings<'_>) -> Result<Self, (&'static str, String)> {
        let client_auth = ClientAuth::parse(t.client_auth).ok_or_else(|| {
            (
                "kafka.tls_client_auth",
                format!(
                    "unknown value `{}`; expected none, requested or required",
                    t.client_auth
                ),
            )
        })?;
        let verifier = match (client_auth, t.client_ca) {
            (ClientAuth::None, None) => None,
            (ClientAuth::None, Some(_)) => {
                return Err((
                    "kafka.tls_client_ca",
                    "set, but kafka.tls_client_auth is none: client certificates would not \
                     be checked; set kafka.tls_client_auth = \"required\" (or \"requested\")"
                        .into(),
                ))
            }
            (_, None) => {
                return Err((
                    "kafka.tls_client_ca",
                    format!(
                        "required with kafka.tls_client_auth = \"{}\": the CAs client \
                         certificates must chain to",
                        t.client_auth
                    ),
                ))
            }
            (mode, Some(ca)) => {
                if t.cert.is_none() || t.key.is_none() {
                    return Err((
                        "kafka.tls_client_auth",
                        "client certificates need TLS: set kafka.tls_cert_file and \
                         kafka.tls_key_file"
                            .into(),
                    ));
                }
                let crls = match t.client_crl {
                    Some(path) => Some(read_crls(path)?),
                    None => None,
                };
                Some(client_verifier(ca, mode == ClientAuth::Requested, crls)?)
            }
        };
        if t.client_crl.is_some() && verifier.is_none() {
            return Err((
                "kafka.tls_client_crl",
                "set, but kafka.tls_client_auth is none: no client certificate is checked".into(),
            ));
        }
        let tls = match (t.cert, t.key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err((
                    "kafka.tls_key_file",
                    "required with kafka.tls_cert_file".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "kafka.tls_cert_file",
                    "required with kafka.tls_key_file".into(),
                ))
            }
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key, verifier)?),
        };
        let crl = match (&tls, t.client_crl, t.client_ca) {
            (Some(acceptor), Some(crl), Some(ca)) => Some(Arc::new(CrlReload {
                cert: t.cert.map(Into::into).unwrap_or_default(),
                key: t.key.map(Into::into).unwrap_or_default(),
                ca: ca.into(),
                optional: client_auth == ClientAuth::Requested,
                crl: crl.into(),
                state: parking_lot::Mutex::new(CrlState {
                    acceptor: acceptor.clone(),
                    stamp: file_stamp(crl),
                    checked: Instant::now(),
                }),
            })),
            _ => None,
        };
        Ok(ListenerTls {
            tls,
            crl,
            client_auth,
        })
    }

    /// The same for the MQTT listeners: errors name the `mqtt.*` keys.
    pub fn for_mqtt(t: &TlsSettings<'_>) -> Result<Self, (&'static str, String)> {
        Self::from_settings(t).map_err(|(key, why)| {
            let key = match key {
                "kafka.tls_cert_file" => "mqtt.tls_cert_file",
                "kafka.tls_key_file" => "mqtt.tls_key_file",
                "kafka.tls_client_auth" => "mqtt.tls_client_auth",
                "kafka.tls_client_ca" => "mqtt.tls_client_ca",
                "kafka.tls_client_crl" => "mqtt.tls_client_crl",
                other => other,
            };
            (key, why.replace("kafka.", "mqtt."))
        })
    }

    /// The TLS acceptor for a new connection: the start-up one, or with a CRL file the one
    /// built from the file as it is now (re-read when it changed).
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        match &self.crl {
            Some(crl) => Some(crl.current()),
            None => self.tls.clone(),
        }
    }
}

/// How often a new connection may look at the CRL file's modification time.
pub const CRL_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The listener's TLS settings with a CRL file, to rebuild the acceptor when the file changes.
struct CrlReload {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: std::path::PathBuf,
    optional: bool,
    crl: std::path::PathBuf,
    state: parking_lot::Mutex<CrlState>,
}

struct CrlState {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The CRL file's (modification time, size) the acceptor was built from.
    stamp: Option<(std::time::SystemTime, u64)>,
    checked: Instant,
}

impl CrlReload {
    fn current(&self) -> tokio_rustls::TlsAcceptor {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= CRL_CHECK_INTERVAL {
            state.checked = Instant::now();
            let stamp = file_stamp(&self.crl);
            if stamp != state.stamp {
                state.stamp = stamp;
                match self.rebuild() {
                    Ok(acceptor) => {
                        tracing::info!(crl = %self.crl.display(), "client certificate revocation lists reloaded");
                        state.acceptor = acceptor;
                    }
                    Err((key, err)) => tracing::error!(
                        key,
                        %err,
                        "client certificate revocation lists not reloaded; the previous ones stay in force"
                    ),
                }
            }
        }
        state.acceptor.clone()
    }

    fn rebuild(&self) -> Result<tokio_rustls::TlsAcceptor, (&'static str, String)> {
        let crls = read_crls(&self.crl)?;
        let verifier = client_verifier(&self.ca, self.optional, Some(crls))?;
        tls_acceptor(&self.cert, &self.key, Some(verifier))
    }
}

fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The X.509 CRLs in the PEM file `path` (`kafka.tls_client_crl`); at least one.
fn read_crls(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, (&'static str, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateRevocationListDer;
    const KEY: &str = "kafka.tls_client_crl";
    let pem =
        std::fs::read(path).map_err(|e| (KEY, format!("cannot read {}: {e}", path.display())))?;
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| (KEY, format!("bad PEM in {}: {e}", path.display())))?;
    if crls.is_empty() {
        return Err((KEY, format!("no X509 CRL in {}", path.display())));
    }
    Ok(crls)
}

/// A rustls verifier of client certificates chaining to the CAs in `ca` (a PEM bundle);
/// `optional`: a client may send none; `crls`: revocation lists every certificate of the chain
/// is checked against (an issuer without one fails: the operator asked for revocation checks).
fn client_verifier(
    ca: &std::path::Path,
    optional: bool,
    crls: Option<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, (&'static str, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    const KEY: &str = "kafka.tls_client_ca";
    let pem = std::fs::read(ca).map_err(|e| (KEY, format!("cannot read {}: {e}", ca.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| (KEY, format!("bad PEM in {}: {e}", ca.display())))?;
    if certs.is_empty() {
        return Err((KEY, format!("no CERTIFICATE in {}", ca.display())));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| {
            (
                KEY,
                format!("not a usable CA certificate in {}: {e}", ca.display()),
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let builder = match crls {
        Some(crls) => builder.with_crls(crls),
        None => builder,
    };
    builder.build().map_err(|e| match e {
        rustls::server::VerifierBuilderError::InvalidCrl(e) => {
            ("kafka.tls_client_crl", format!("not a usable CRL: {e:?}"))
        }
        e => (KEY, e.to_string()),
    })
}

/// The listener's TLS config; `clients`: verify client certificates with it.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<tokio_rustls::TlsAcceptor, (&'static str, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |key_name: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| (key_name, format!("cannot read {}: {e}", path.display())))
    };
    let cert_pem = read("kafka.tls_cert_file", cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ("kafka.tls_cert_file", format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err((
            "kafka.tls_cert_file",
            format!("no CERTIFICATE in {}", cert.display()),
        ));
    }
    let key_pem = read("kafka.tls_key_file", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            "kafka.tls_key_file",
            format!("no usable private key in {}: {e}", key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("kafka.tls_cert_file", e.to_string()))?;
    let builder = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, private).map_err(|e| {
        (
            "kafka.tls_key_file",
            format!("does not match the certificate: {e}"),
        )
    })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Where a connection stands in authentication.
enum State {
    /// Nothing yet (or SASL is off).
    Start,
    /// SaslHandshake chose a mechanism; `raw`: v0, tokens come without a Kafka header;
    /// `reauth`: the connection was authenticated before (KIP-368).
    Handshaken {
        mech: Mechanism,
        raw: bool,
        reauth: bool,
    },
    /// SCRAM: the server-first message was sent.
    ScramSent {
        exchange: Box<ServerExchange>,
        mech: Mechanism,
        user: String,
        raw: bool,
        reauth: bool,
    },
    Authenticated,
    /// A failure was answered; the connection closes.
    Failed,
}

/// Per-connection authentication state.
pub struct Session {
    state: State,
    /// The principal's name for ACLs: the SASL user, else (SASL off) the client certificate's
    /// mapped subject.
    pub principal: Option<String>,
    /// The mechanism of the login; a re-authentication must use the same (Kafka's rule).
    mechanism: Option<Mechanism>,
    /// When the SASL session ends (KIP-368); `None`: never.
    expires: Option<Instant>,
}

/// What the connection does with a frame after [`Session::intercept`].
pub enum Intercept {
    /// Not an authentication matter: dispatch as usual.
    Pass(Bytes),
    /// Answer with this frame and continue.
    Reply(BytesMut),
    /// Answer with this frame, then close.
    ReplyClose(BytesMut, String),
    /// Close without answering.
    Close(String),
}

const AUTH_FAILED: &str = "Authentication failed: invalid credentials";

impl Session {
    /// `certificate_principal`: the name [`Security::certificate_principal`] gave the client's
    /// certificate; it is the principal only when SASL is off (with SASL the SASL user wins).
    pub fn new(sec: &Security, certificate_principal: Option<String>) -> Self {
        Self {
            state: State::Start,
            principal: certificate_principal.filter(|_| !sec.sasl_enabled()),
            mechanism: None,
            expires: None,
        }
    }

    /// Decides what to do with one request frame, arrived at `now`. Called for every frame;
    /// cheap unless the frame is an authentication matter.
    pub async fn intercept(&mut self, node: &Arc<Node>, frame: Bytes, now: Instant) -> Intercept {
        let sec = &node.config.kafka_security;
        // SaslHandshake v0: the next frames are raw tokens.
        match &self.state {
            State::Handshaken { raw: true, .. } | State::ScramSent { raw: true, .. } => {
                return self.token(node, &frame, None, now).await;
            }
            _ => {}
        }
        if frame.len() < 8 {
            return Intercept::Pass(frame); // dispatch answers the malformed frame
        }
        let key = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]]));
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        // KIP-368: an expired session may only start a re-authentication.
        if matches!(self.state, State::Authenticated)
            && self.expires.is_some_and(|at| now >= at)
            && key != Ok(ApiKey::SaslHandshake)
        {
            Metrics::inc(&node.metrics.kafka_sessions_expired_total);
            return Intercept::Close(
                "SASL session expired (kafka.connections_max_reauth_ms) without re-authentication"
                    .into(),
            );
        }
        let authenticated = !sec.sasl_enabled() || matches!(self.state, State::Authenticated);
        match key {
            Ok(ApiKey::SaslHandshake) | Ok(ApiKey::SaslAuthenticate)
                if super::versions::range(key.unwrap_or(ApiKey::ApiVersions))
                    .is_some_and(|(lo, hi)| (lo..=hi).contains(&version)) => {}
            Ok(ApiKey::ApiVersions) => return Intercept::Pass(frame),
            _ if authenticated => return Intercept::Pass(frame),
            _ => {
                return Intercept::Close(format!(
                    "request {key:?} before SASL authentication completed"
                ))
            }
        }
        let api_key = key.unwrap_or(ApiKey::ApiVersions);
        let mut body = frame;
        let header = match RequestHeader::decode(&mut body, api_key.request_header_version(version))
        {
            Ok(h) => h,
            Err(e) => return Intercept::Close(format!("malformed request header: {e}")),
        };
        let request = match RequestKind::decode(api_key, &mut body, version) {
            Ok(r) => r,
            Err(e) => return Intercept::Close(format!("malformed SASL request: {e}")),
        };
        let cid = header.correlation_id;
        let reply = |body: ResponseKind| super::handlers::encode(api_key, version, cid, &body);
        match request {
            RequestKind::SaslHandshake(req) => {
                let offered = StrBytes::from_string;
                let mechanisms: Vec<StrBytes> = sec
                    .mechanisms
                    .iter()
                    .map(|m| offered(m.name().to_string()))
                    .collect();
                let resp = SaslHandshakeResponse::default().with_mechanisms(mechanisms);
                let reauth = matches!(self.state, State::Authenticated);
                if !matches!(self.state, State::Start) && !reauth {
                    let resp = resp.with_error_code(E::IllegalSaslState.code());
                    return Intercept::ReplyClose(
                        reply(ResponseKind::SaslHandshake(resp)),
                        "SaslHandshake out of sequence".into(),
                    );
                }
                let chosen =
                    Mechanism::parse(req.mechanism.as_str()).filter(|m| sec.mechanisms.contains(m));
                // A re-authentication keeps the login's mechanism (Kafka's rule).
                let chosen = chosen.filter(|m| !reauth || self.mechanism == Some(*m));
                let Some(mech) = chosen else {
                    let resp = match (reauth, self.mechanism) {
                        (true, Some(m)) => resp.with_mechanisms(vec![offered(m.name().into())]),
                        _ => resp,
                    };
                    let resp = resp.with_error_code(E::UnsupportedSaslMechanism.code());
                    let why = if reauth {
                        "re-authentication must use the login's SASL mechanism"
                    } else {
                        "unsupported SASL mechanism"
                    };
                    return Intercept::ReplyClose(
                        reply(ResponseKind::SaslHandshake(resp)),
                        format!("{why}: `{}`", req.mechanism.as_str()),
                    );
                };
                self.state = State::Handshaken {
                    mech,
                    raw: version == 0,
                    reauth,
                };
                Intercept::Reply(reply(ResponseKind::SaslHandshake(resp)))
            }
            RequestKind::SaslAuthenticate(req) => {
                self.token(node, &req.auth_bytes, Some((api_key, version, cid)), now)
                    .await
            }
            _ => Intercept::Close("unexpected request".into()),
        }
    }

    /// One SASL token, raw (`wire` = None) or inside SaslAuthenticate.
    async fn token(
        &mut self,
        node: &Arc<Node>,
        token: &[u8],
        wire: Option<(ApiKey, i16, i32)>,
        now: Instant,
    ) -> Intercept {
        let lifetime = node.config.kafka_security.session_lifetime;
        // `lifetime_ms`: KIP-368's session_lifetime_ms (v1+), sent with a completed login.
        let answer = |code: i16, message: Option<&str>, bytes: Vec<u8>, lifetime_ms: i64| match wire
        {
            Some((api_key, version, cid)) => {
                let resp = SaslAuthenticateResponse::default()
                    .with_error_code(code)
                    .with_error_message(message.map(|m| StrBytes::from_string(m.to_string())))
                    .with_auth_bytes(Bytes::from(bytes))
                    .with_session_lifetime_ms(if version >= 1 { lifetime_ms } else { 0 });
                super::handlers::encode(
                    api_key,
                    version,
                    cid,
                    &ResponseKind::SaslAuthenticate(resp),
                )
            }
            None => {
                let mut buf = BytesMut::with_capacity(4 + bytes.len());
                buf.put_i32(bytes.len() as i32);
                buf.put_slice(&bytes);
                buf
            }
        };
        let state = std::mem::replace(&mut self.state, State::Failed);
        let (mech, reauth, outcome) = match state {
            State::Handshaken { mech, raw, reauth } => (
                mech,
                reauth,
                self.first_token(node, mech, raw, reauth, token).await,
            ),
            State::ScramSent {
                exchange,
                mech,
                user,
                raw: _,
                reauth,
            } => (
                mech,
                reauth,
                exchange
                    .finish(token)
                    .map(|m| Step::Done(user, m.into_bytes())),
            ),
            State::Authenticated | State::Start | State::Failed => {
                let msg = "SaslAuthenticate out of sequence";
                return match wire {
                    Some(_) => Intercept::ReplyClose(
                        answer(E::IllegalSaslState.code(), Some(msg), Vec::new(), 0),
                        msg.into(),
                    ),
                    None => Intercept::Close(msg.into()),
                };
            }
        };
        let mech_name = mech.name();
        // Kafka refuses a re-authentication as another principal.
        let outcome = match outcome {
            Ok(Step::Done(user, _))
                if reauth && self.principal.as_deref() != Some(user.as_str()) =>
            {
                Err(scram::ScramError::Malformed(
                    "re-authentication as another user",
                ))
            }
            other => other,
        };
        match outcome {
            Ok(Step::Continue(bytes)) => Intercept::Reply(answer(errors::NONE, None, bytes, 0)),
            Ok(Step::Done(user, bytes)) => {
                if reauth {
                    Metrics::inc(&node.metrics.kafka_reauthentications_total);
                    tracing::debug!(%user, "kafka client re-authenticated");
                } else {
                    tracing::debug!(%user, "kafka client authenticated");
                }
                self.principal = Some(user);
                self.mechanism = Some(mech);
                self.state = State::Authenticated;
                self.expires = lifetime.map(|d| now + d);
                let lifetime_ms = lifetime.map_or(0, |d| d.as_millis() as i64);
                Intercept::Reply(answer(errors::NONE, None, bytes, lifetime_ms))
            }
            Err(reason) => {
                Metrics::add(&node.metrics.kafka_auth_failures_total, 1);
                let message = format!("{AUTH_FAILED} with SASL mechanism {mech_name}");
                let why = format!("SASL authentication failed: {reason}");
                match wire {
                    Some(_) => Intercept::ReplyClose(
                        answer(
                            E::SaslAuthenticationFailed.code(),
                            Some(&message),
                            Vec::new(),
                            0,
                        ),
                        why,
                    ),
                    None => Intercept::Close(why),
                }
            }
        }
    }

    async fn first_token(
        &mut self,
        node: &Arc<Node>,
        mech: Mechanism,
        raw: bool,
        reauth: bool,
        token: &[u8],
    ) -> Result<Step, scram::ScramError> {
        if token.len() > scram::TOKEN_BYTES_MAX {
            return Err(scram::ScramError::Malformed("token too long"));
        }
        match mech {
            Mechanism::Plain => {
                let (user, password) = scram::parse_plain(token)?;
                let found = {
                    let state = node.meta.read();
                    [ScramMechanism::Sha512, ScramMechanism::Sha256]
                        .into_iter()
                        .find_map(|m| state.scram_credential(user, m).map(|c| (m, c.clone())))
                };
                // An unknown user costs the same derivation as a known one.
                let (m, cred, known) = match found {
                    Some((m, c)) => (m, c, true),
                    None => {
                        let m = ScramMechanism::Sha512;
                        (
                            m,
                            scram::decoy_credential(m, &node.decoy_secret, user),
                            false,
                        )
                    }
                };
                // PBKDF2 costs milliseconds: keep it off the connection's runtime worker.
                let password = password.to_vec();
                let verified = tokio::task::spawn_blocking(move || {
                    scram::verify_password(m, &cred, &password)
                })
                .await
                .unwrap_or(false);
                if verified && known {
                    Ok(Step::Done(user.to_string(), Vec::new()))
                } else {
                    Err(scram::ScramError::BadProof)
                }
            }
            Mechanism::Scram(m) => {
                let first: ClientFirst = scram::parse_client_first(token)?;
                let user = first.user.clone();
                let (exchange, server_first) = scram_start(node, m, first);
                self.state = State::ScramSent {
                    exchange: Box::new(exchange),
                    mech,
                    user,
                    raw,
                    reauth,
                };
                Ok(Step::Continue(server_first.into_bytes()))
            }
        }
    }
}

enum Step {
    /// Send these bytes and wait for the next token.
    Continue(Vec<u8>),
    /// Authenticated as this user; send these bytes (the server-final message).
    Done(String, Vec<u8>),
}

// ---------------------------------------------------------------------------------------------
// The user APIs.

/// DescribeUserScramCredentials v0: every user (no filter) or the named ones.
/// The server side of a SCRAM exchange for a parsed client-first message: the user's
/// credential from metadata (an unknown user gets a decoy, so it goes through the same steps
/// and its proof never verifies) and a fresh server nonce. Returns the exchange and the
/// server-first message. Kafka's SASL and MQTT 5 enhanced authentication both start here.
pub fn scram_start(
    node: &Node,
    mech: ScramMechanism,
    first: ClientFirst,
) -> (ServerExchange, String) {
    let cred = node
        .meta
        .read()
        .scram_credential(&first.user, mech)
        .cloned()
        .unwrap_or_else(|| scram::decoy_credential(mech, &node.decoy_secret, &first.user));
    let nonce: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    ServerExchange::start(mech, first, cred, &nonce)
}

pub fn describe_users(
    node: &Arc<Node>,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let state = node.meta.read();
    let all: Vec<(String, Vec<(ScramMechanism, u32)>)> = state
        .scram_users()
        .map(|(u, c)| (u.to_string(), c))
        .collect();
    drop(state);
    let result = |user: &str, creds: &[(ScramMechanism, u32)]| {
        DescribeUserScramCredentialsResult::default()
            .with_user(StrBytes::from_string(user.to_string()))
            .with_credential_infos(
                creds
                    .iter()
                    .map(|(m, i)| {
                        CredentialInfo::default()
                            .with_mechanism(mechanism_code(*m))
                            .with_iterations(*i as i32)
                    })
                    .collect(),
            )
    };
    let results = match req.users {
        None => all.iter().map(|(u, c)| result(u, c)).collect(),
        Some(names) if names.is_empty() => all.iter().map(|(u, c)| result(u, c)).collect(),
        Some(names) => names
            .iter()
            .map(|n| match all.iter().find(|(u, _)| u == n.name.as_str()) {
                Some((u, c)) => result(u, c),
                None => DescribeUserScramCredentialsResult::default()
                    .with_user(n.name.clone())
                    .with_error_code(E::ResourceNotFound.code())
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "attempt to describe a user credential that does not exist: {}",
                        n.name.as_str()
                    )))),
            })
            .collect(),
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

/// AlterUserScramCredentials v0: deletions and upsertions, one metadata command each. The
/// client sends the salted password (as Kafka's tools do); StoredKey and ServerKey are derived
/// here and the salted password is dropped.
pub async fn alter_users(
    node: &Arc<Node>,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut results = Vec::new();
    let mut push = |user: &StrBytes, code: i16, message: Option<String>| {
        results.push(
            AlterUserScramCredentialsResult::default()
                .with_user(user.clone())
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string)),
        )
    };
    for d in &req.deletions {
        let Some(m) = mechanism_from_code(d.mechanism) else {
            push(
                &d.name,
                E::UnsupportedSaslMechanism.code(),
                Some(format!("unknown SCRAM mechanism {}", d.mechanism)),
            );
            continue;
        };
        let cmd = Command::DeleteScramCredential {
            user: d.name.to_string(),
            mechanism: m,
        };
        let (code, msg) = write(node, cmd).await;
        push(&d.name, code, msg);
    }
    for u in &req.upsertions {
        let Some(m) = mechanism_from_code(u.mechanism) else {
            push(
                &u.name,
                E::UnsupportedSaslMechanism.code(),
                Some(format!("unknown SCRAM mechanism {}", u.mechanism)),
            );
            continue;
        };
        if u.iterations < scram::ITERATIONS_MIN as i32
            || u.iterations > scram::ITERATIONS_MAX as i32
        {
            push(
                &u.name,
                E::UnacceptableCredential.code(),
                Some(format!(
                    "iterations must be in {}..={}",
                    scram::ITERATIONS_MIN,
                    scram::ITERATIONS_MAX
                )),
            );
            continue;
        }
        if u.salted_password.len() != m.key_bytes() || u.salt.is_empty() {
            push(
                &u.name,
                E::UnacceptableCredential.code(),
                Some("bad salt or salted password".into()),
            );
            continue;
        }
        let cred =
            scram::credential_from_salted(m, &u.salted_password, &u.salt, u.iterations as u32);
        let cmd = Command::UpsertScramCredential {
            user: u.name.to_string(),
            mechanism: m,
            credential: cred,
        };
        let (code, msg) = write(node, cmd).await;
        push(&u.name, code, msg);
    }
    AlterUserScramCredentialsResponse::default().with_results(results)
}

async fn write(node: &Arc<Node>, cmd: Command) -> (i16, Option<String>) {
    match node.meta.write(cmd).await {
        Ok(CommandResult::Rejected(r @ Rejection::UnknownScramCredential { .. })) => {
            (E::ResourceNotFound.code(), Some(r.to_string()))
        }
        Ok(CommandResult::Rejected(r)) => (E::UnacceptableCredential.code(), Some(r.to_string())),
        Ok(_) => (errors::NONE, None),
        Err(e) => (E::RequestTimedOut.code(), Some(e.to_string())),
    }
}

/// A new credential for `password` (the admin HTTP bootstrap path): fresh salt.
pub fn new_credential(m: ScramMechanism, password: &[u8], iterations: u32) -> ScramCredential {
    let salt: [u8; 16] = rand::thread_rng().gen();
    scram::credential(m, password, &salt, iterations)
}
