//! MQTT over QUIC against the built `strata` binary, with quinn as the client (the EMQX
//! convention: ALPN `mqtt`, one bidirectional stream per connection) and MQTT packets encoded
//! here by hand (the few a client needs), so the broker's own codec is not on both sides.
//!
//! Each test starts its own `strata start` on port 0 everywhere (the listeners' addresses are
//! read from its startup lines) with a self-signed certificate made by rcgen, and kills it by
//! its `Child` handle at the end (also when the test fails).

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, TransportErrorCode, VarInt};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// Generous: the machine running the tests may be loaded (2 cores, parallel builds).
const WAIT: Duration = Duration::from_secs(60);
/// The broker's application error code for a refused second stream (`mqtt::quic`).
const STREAM_REFUSED: u32 = 1;

// ---------------------------------------------------------------------------------------
// The broker process

/// One `strata start`, killed on drop.
struct Broker {
    child: Child,
    /// Listener name (`mqtt`, `mqtt quic (udp)`, ...) → address, from the startup lines.
    addrs: HashMap<String, SocketAddr>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a node with the MQTT certificate set, the QUIC listener on, and `extra` lines
    /// appended to the `[mqtt]` section; returns once it printed `ready`.
    fn start(extra_mqtt: &str) -> (Broker, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_der = cert.cert.der().to_vec();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let config = dir.path().join("strata.toml");
        std::fs::write(
            &config,
            format!(
                "[mqtt]\ntls_cert_file = {:?}\ntls_key_file = {:?}\nsys_interval_secs = 0\n{extra_mqtt}",
                cert_path.display().to_string(),
                key_path.display().to_string()
            ),
        )
        .unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut child = strata(dir.path())
            .arg("--config")
            .arg(&config)
            .args(["--mqtt-quic-listen", "127.0.0.1:0"])
            .args(["--mqtt-tls-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn strata");
        // Read the startup lines on a thread (and keep draining stdout after `ready`).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut broker = Broker {
            child,
            addrs: HashMap::new(),
            stderr,
            _dir: dir,
        };
        loop {
            let line = match rx.recv_timeout(WAIT) {
                Ok(line) => line,
                Err(e) => panic!(
                    "strata did not get ready ({e}); stderr:\n{}",
                    broker.stderr_tail()
                ),
            };
            if line.starts_with("strata: ready") {
                break;
            }
            // "strata: mqtt quic (udp) listening on 127.0.0.1:40000"
            if let Some((what, addr)) = line
                .strip_prefix("strata: ")
                .and_then(|l| l.split_once(" listening on "))
            {
                broker
                    .addrs
                    .insert(what.to_string(), addr.parse().expect("an address"));
            }
        }
        (broker, cert_der)
    }

    fn addr(&self, what: &str) -> SocketAddr {
        *self
            .addrs
            .get(what)
            .unwrap_or_else(|| panic!("no `{what}` listener in {:?}", self.addrs))
    }

    fn stderr_tail(&self) -> String {
        let all = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- strata stderr tail ---\n{}", self.stderr_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `strata start` on port 0 everywhere, data under `dir`, no STRATA_* variables inherited.
fn strata(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    for (k, _) in std::env::vars() {
        if k.starts_with("STRATA_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("start")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--kafka-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--mqtt-listen", "127.0.0.1:0"])
        .args(["--meta-listen", "127.0.0.1:0"])
        .stdin(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------------------
// QUIC client

/// A quinn client endpoint trusting `cert_der` and offering `alpn` (none when empty).
fn quic_client(cert_der: &[u8], alpn: &[&[u8]]) -> quinn::Endpoint {
    quic_client_with(cert_der, alpn, None)
}

/// The same, presenting a client certificate (`(certificate DER, PKCS#8 key DER)`) when given.
fn quic_client_with(
    cert_der: &[u8],
    alpn: &[&[u8]],
    client_cert: Option<(Vec<u8>, Vec<u8>)>,
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match client_cert {
        Some((cert, key)) => tls
            .with_client_auth_cert(
                vec![rustls::pki_types::CertificateDer::from(cert)],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
            )
            .expect("client certificate"),
        None => tls.with_no_client_auth(),
    };
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

async fn quic_connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<quinn::Connection, ConnectionError> {
    let connecting = endpoint.connect(addr, "localhost").expect("connect");
    tokio::time::timeout(WAIT, connecting)
        .await
        .expect("QUIC handshake timed out")
}

/// Connects, trying again while the broker refuses for `mqtt.connections_max`: a slot is
/// freed a moment after the client saw its previous connection end.
async fn quic_connect_when_free(endpoint: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match quic_connect(endpoint, addr).await {
            Ok(conn) => return conn,
            Err(ConnectionError::ConnectionClosed(close))
                if close.error_code == TransportErrorCode::CONNECTION_REFUSED
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(other) => panic!("QUIC connection failed: {other}"),
        }
    }
}

/// An MQTT client on a QUIC connection's first bidirectional stream.
async fn mqtt_over_quic(conn: &quinn::Connection, v5: bool) -> Mqtt {
    let (send, recv) = conn.open_bi().await.expect("open stream");
    Mqtt::new(Box::new(recv), Box::new(send), v5)
}

// ---------------------------------------------------------------------------------------
// MQTT, hand-encoded (3.1.1 and 5.0, the packets this test uses)

/// A received PUBLISH.
#[derive(Debug)]
struct Publish {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    packet_id: Option<u16>,
}

struct Mqtt {
    rd: Box<dyn AsyncRead + Send + Unpin>,
    wr: Box<dyn AsyncWrite + Send + Unpin>,
    v5: bool,
    /// PUBLISHes read while waiting for something else.
    publishes: Vec<Publish>,
    /// PUBACK packet ids read while waiting for something else.
    pubacks: Vec<u16>,
}

fn var_int(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    var_int(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// Reads a variable byte integer from `body` at `*at`.
fn read_var_int(body: &[u8], at: &mut usize) -> usize {
    let (mut n, mut shift) = (0usize, 0);
    loop {
        let b = body[*at];
        *at += 1;
        n |= ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return n;
        }
        shift += 7;
    }
}

impl Mqtt {
    fn new(
        rd: Box<dyn AsyncRead + Send + Unpin>,
        wr: Box<dyn AsyncWrite + Send + Unpin>,
        v5: bool,
    ) -> Mqtt {
        Mqtt {
            rd,
            wr,
            v5,
            publishes: Vec::new(),
            pubacks: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.expect("write");
        self.wr.flush().await.expect("flush");
    }

    /// Reads one packet: (first byte, body).
    async fn read(&mut self) -> (u8, Vec<u8>) {
        tokio::time::timeout(WAIT, async {
            let first = self.rd.read_u8().await.expect("read packet type");
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let b = self.rd.read_u8().await.expect("read length");
                len |= ((b & 0x7f) as usize) << shift;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            let mut body = vec![0; len];
            self.rd.read_exact(&mut body).await.expect("read body");
            (first, body)
        })
        .await
        .expect("no packet from the broker in time")
    }

    /// CONNECT (clean start, keep alive 60 s) and its CONNACK, which must accept. A will,
    /// when given, is `(topic, payload)` at QoS 1.
    async fn connect(&mut self, client_id: &str, will: Option<(&str, &[u8])>) {
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.push(if self.v5 { 5 } else { 4 });
        let mut flags = 0x02; // clean session / clean start
        if will.is_some() {
            flags |= 0x04 | 0x08; // will flag, will QoS 1
        }
        body.push(flags);
        body.extend_from_slice(&60u16.to_be_bytes());
        if self.v5 {
            body.push(0); // no properties
        }
        string(client_id.as_bytes(), &mut body);
        if let Some((topic, payload)) = will {
            if self.v5 {
                body.push(0); // no will properties
            }
            string(topic.as_bytes(), &mut body);
            string(payload, &mut body);
        }
        self.send(&packet(0x10, &body)).await;
        let (first, body) = self.read().await;
        assert_eq!(first, 0x20, "CONNACK expected, got {first:#x} {body:?}");
        assert_eq!(body[1], 0, "CONNACK refused the connection: {body:?}");
    }

    /// SUBSCRIBE `filter` at QoS 1 and its SUBACK, which must grant QoS 1.
    async fn subscribe(&mut self, packet_id: u16, filter: &str) {
        let mut body = packet_id.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        string(filter.as_bytes(), &mut body);
        body.push(1);
        self.send(&packet(0x82, &body)).await;
        let (first, body) = loop {
            let (first, body) = self.read().await;
            if first & 0xf0 != 0x30 {
                break (first, body);
            }
            self.keep_publish(first, &body).await;
        };
        assert_eq!(first, 0x90, "SUBACK expected, got {first:#x}");
        assert_eq!(&body[..2], &packet_id.to_be_bytes());
        assert_eq!(*body.last().unwrap(), 1, "SUBACK did not grant QoS 1");
    }

    async fn publish_qos1(&mut self, packet_id: u16, topic: &str, payload: &[u8]) {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        body.extend_from_slice(&packet_id.to_be_bytes());
        if self.v5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        self.send(&packet(0x32, &body)).await;
    }

    /// Decodes a PUBLISH, acknowledges it if QoS 1, and keeps it.
    async fn keep_publish(&mut self, first: u8, body: &[u8]) {
        let qos = (first >> 1) & 0x03;
        let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
        let topic = String::from_utf8(body[2..2 + tlen].to_vec()).unwrap();
        let mut at = 2 + tlen;
        let packet_id = (qos > 0).then(|| {
            at += 2;
            u16::from_be_bytes([body[at - 2], body[at - 1]])
        });
        if self.v5 {
            let props = read_var_int(body, &mut at);
            at += props;
        }
        if let Some(id) = packet_id {
            self.send(&packet(0x40, &id.to_be_bytes())).await;
        }
        self.publishes.push(Publish {
            topic,
            payload: body[at..].to_vec(),
            qos,
            packet_id,
        });
    }

    /// Reads until the PUBACK of `packet_id`, keeping any PUBLISH on the way.
    async fn await_puback(&mut self, packet_id: u16) {
        while !self.pubacks.contains(&packet_id) {
            let (first, body) = self.read().await;
            match first & 0xf0 {
                0x30 => self.keep_publish(first, &body).await,
                0x40 => {
                    let id = u16::from_be_bytes([body[0], body[1]]);
                    if body.len() > 2 {
                        assert!(body[2] < 0x80, "PUBACK {id} failed: reason {:#x}", body[2]);
                    }
                    self.pubacks.push(id);
                }
                other => panic!("unexpected packet {other:#x} while waiting for PUBACK"),
            }
        }
        self.pubacks.retain(|id| *id != packet_id);
    }

    /// Reads until a PUBLISH on `topic` arrived (acknowledged), and returns it.
    async fn await_publish(&mut self, topic: &str) -> Publish {
        loop {
            if let Some(i) = self.publishes.iter().position(|p| p.topic == topic) {
                return self.publishes.remove(i);
            }
            let (first, body) = self.read().await;
            match first & 0xf0 {
                0x30 => self.keep_publish(first, &body).await,
                0x40 => self.pubacks.push(u16::from_be_bytes([body[0], body[1]])),
                other => panic!("unexpected packet {other:#x} while waiting for PUBLISH"),
            }
        }
    }

    async fn disconnect(&mut self) {
        self.send(&[0xe0, 0x00]).await;
        let _ = self.wr.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_quic_reaches_quic_and_tcp_subscribers() {
    let (broker, cert) = Broker::start("");
    let quic_addr = broker.addr("mqtt quic (udp)");
    let tcp_addr = broker.addr("mqtt");
    let client = quic_client(&cert, &[b"mqtt"]);

    // A (MQTT 5 over QUIC) subscribes and publishes QoS 1 to itself.
    let conn_a = quic_connect(&client, quic_addr).await.expect("QUIC A");
    let mut a = mqtt_over_quic(&conn_a, true).await;
    a.connect("quic-a", None).await;
    a.subscribe(1, "quic/#").await;
    a.publish_qos1(2, "quic/self", b"hello self").await;
    a.await_puback(2).await;
    let got = a.await_publish("quic/self").await;
    assert_eq!(got.payload, b"hello self");
    assert_eq!(got.qos, 1);
    assert!(got.packet_id.is_some());

    // T (MQTT 3.1.1 over plain TCP) subscribes to the same filter.
    let tcp = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    let (rd, wr) = tcp.into_split();
    let mut t = Mqtt::new(Box::new(rd), Box::new(wr), false);
    t.connect("tcp-t", None).await;
    t.subscribe(1, "quic/#").await;

    // B (MQTT 3.1.1 over QUIC) publishes; A and T get it.
    let conn_b = quic_connect(&client, quic_addr).await.expect("QUIC B");
    let mut b = mqtt_over_quic(&conn_b, false).await;
    b.connect("quic-b", None).await;
    b.publish_qos1(7, "quic/from-b", b"hello from b").await;
    b.await_puback(7).await;
    assert_eq!(
        a.await_publish("quic/from-b").await.payload,
        b"hello from b"
    );
    let at_t = t.await_publish("quic/from-b").await;
    assert_eq!(at_t.payload, b"hello from b");
    assert_eq!(at_t.qos, 1);

    // A second stream on B's connection is refused; B's MQTT stream goes on.
    let (mut send2, mut recv2) = conn_b.open_bi().await.unwrap();
    send2.write_all(&[0x10, 0x00]).await.unwrap();
    let refused = tokio::time::timeout(WAIT, recv2.read_to_end(1024))
        .await
        .expect("second stream neither refused nor answered");
    match refused {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code, VarInt::from_u32(STREAM_REFUSED))
        }
        other => panic!("second stream not refused: {other:?}"),
    }
    b.publish_qos1(8, "quic/from-b-again", b"still here").await;
    b.await_puback(8).await;
    assert_eq!(
        t.await_publish("quic/from-b-again").await.payload,
        b"still here"
    );

    // DISCONNECT over QUIC: the broker finishes the stream and closes the connection with
    // application code 0.
    b.disconnect().await;
    let closed = tokio::time::timeout(WAIT, conn_b.closed())
        .await
        .expect("broker did not close the QUIC connection after DISCONNECT");
    match closed {
        ConnectionError::ApplicationClosed(close) => assert_eq!(close.error_code, 0u32.into()),
        other => panic!("QUIC connection ended otherwise: {other:?}"),
    }

    // C (over QUIC, with a will) drops its QUIC connection without DISCONNECT: the session
    // ends as on a TCP close, so the will reaches T.
    let conn_c = quic_connect(&client, quic_addr).await.expect("QUIC C");
    let mut c = mqtt_over_quic(&conn_c, false).await;
    c.connect("quic-c", Some(("quic/will", b"c is gone"))).await;
    conn_c.close(VarInt::from_u32(42), b"gone");
    assert_eq!(t.await_publish("quic/will").await.payload, b"c is gone");

    conn_a.close(VarInt::from_u32(0), b"");
    client.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_refuses_wrong_alpn_and_connections_past_the_limit() {
    let (broker, cert) = Broker::start("connections_max = 1\n");
    let quic_addr = broker.addr("mqtt quic (udp)");
    let no_app_protocol = TransportErrorCode::crypto(120); // TLS alert no_application_protocol

    for alpn in [&[b"h3".as_slice()][..], &[]] {
        let client = quic_client(&cert, alpn);
        // The previous refused handshake may hold the one slot a moment longer: CONNECTION_REFUSED
        // (the limit) is retried, any other outcome is the answer to this ALPN.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match quic_connect(&client, quic_addr).await {
                Err(ConnectionError::ConnectionClosed(close))
                    if close.error_code == TransportErrorCode::CONNECTION_REFUSED
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(ConnectionError::ConnectionClosed(close)) => {
                    assert_eq!(close.error_code, no_app_protocol, "ALPN {alpn:?}: {close}");
                    break;
                }
                Err(other) => panic!("ALPN {alpn:?}: refused otherwise: {other}"),
                Ok(_) => panic!("ALPN {alpn:?}: connection accepted"),
            }
        }
    }

    // ALPN `mqtt` is accepted; with `mqtt.connections_max = 1` a second connection is
    // refused while the first is open.
    let client = quic_client(&cert, &[b"mqtt"]);
    // (The refused handshakes above may hold their slot a moment longer.)
    let first = quic_connect_when_free(&client, quic_addr).await;
    let mut m = mqtt_over_quic(&first, true).await;
    m.connect("only-one", None).await;
    match quic_connect(&client, quic_addr).await {
        Err(ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(close.error_code, TransportErrorCode::CONNECTION_REFUSED)
        }
        Err(other) => panic!("second connection refused otherwise: {other}"),
        Ok(_) => panic!("second connection accepted past mqtt.connections_max = 1"),
    }
    // Once the first is closed its slot frees (when the broker has seen the close).
    first.close(VarInt::from_u32(0), b"");
    let again = quic_connect_when_free(&client, quic_addr).await;
    let mut m = mqtt_over_quic(&again, false).await;
    m.connect("next-one", None).await;
    again.close(VarInt::from_u32(0), b"");
    client.wait_idle().await;
}

/// `mqtt.tls_client_auth = "required"` with `tls_cert_as_username = "cn"` on a password
/// broker: a QUIC client with a certificate the CA signed logs in without a password as the
/// user its CN names, and the `%u` ACL gives it its own tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_client_certificate_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "devices CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let dev_key = rcgen::KeyPair::generate().unwrap();
    let mut dev_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    dev_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sensor-7");
    dev_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let dev_cert = dev_params.signed_by(&dev_key, &issuer).unwrap();

    let (broker, cert) = Broker::start(&format!(
        "auth = \"password\"\ntls_client_auth = \"required\"\ntls_client_ca = {:?}\n\
         tls_cert_as_username = \"cn\"\n\
         [[mqtt.acl]]\nuser = \"*\"\naction = \"all\"\nfilter = \"users/%u/#\"\npermission = \"allow\"\n\
         [[mqtt.acl]]\nuser = \"*\"\naction = \"all\"\nfilter = \"users/#\"\npermission = \"deny\"\n",
        ca_path.display().to_string()
    ));
    let client = quic_client_with(
        &cert,
        &[b"mqtt"],
        Some((dev_cert.der().to_vec(), dev_key.serialize_der())),
    );
    let conn = quic_connect_when_free(&client, broker.addr("mqtt quic (udp)")).await;
    let mut m = mqtt_over_quic(&conn, true).await;
    // No user name or password: the certificate logs it in (else CONNACK 0x87).
    m.connect("sensor-7-quic", None).await;
    // Only `users/sensor-7/#` is allowed for user sensor-7 (else SUBACK 0x87).
    m.subscribe(1, "users/sensor-7/#").await;
    m.publish_qos1(2, "users/sensor-7/t", b"by certificate")
        .await;
    m.await_puback(2).await;
    let p = m.await_publish("users/sensor-7/t").await;
    assert_eq!(p.payload, b"by certificate");
    m.disconnect().await;
    conn.close(VarInt::from_u32(0), b"");
    client.wait_idle().await;
}

#[test]
fn quic_listen_without_a_certificate_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = strata(dir.path())
        .args(["--mqtt-quic-listen", "127.0.0.1:0"])
        .output()
        .expect("run strata");
    assert_eq!(out.status.code(), Some(2), "exit code (2 = bad config)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mqtt.quic_listen"), "{stderr}");
    assert!(stderr.contains("mqtt.tls_cert_file"), "{stderr}");
}
