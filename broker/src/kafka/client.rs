//! A minimal Kafka client for the `strata topic …`, `produce`, `consume` and `export …` commands.
//!
//! It speaks the same wire protocol as any stock client (through `kafka-protocol`), so the CLI
//! works against any StrataMQ broker — or any Kafka broker — it can reach, and the admin path
//! is exercised exactly as clients exercise it. One request at a time on one connection; a
//! caller that reads partitions led by several brokers opens one client per leader (see
//! [`AdminClient::topic_layout`], which names each partition's leader and its address).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, FetchRequest, FetchResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Record;
use kafka_protocol::ResponseError;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Versions this client sends: old enough for any broker of the last years, new enough to be
/// flexible (tagged fields) where StrataMQ's floor allows.
const METADATA_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 5;
const DELETE_TOPICS_VERSION: i16 = 4;
const CREATE_PARTITIONS_VERSION: i16 = 2;
const INCREMENTAL_ALTER_CONFIGS_VERSION: i16 = 1;
/// Kafka's resource type for a topic (DescribeConfigs, IncrementalAlterConfigs).
const RESOURCE_TOPIC: i8 = 2;
const LIST_OFFSETS_VERSION: i16 = 5;
/// v12: the last version that names topics (v13+ address them by id only).
const FETCH_VERSION: i16 = 12;
/// CreateAcls, DescribeAcls, DeleteAcls: v2 is flexible; v3 only adds the User resource type.
const ACLS_VERSION: i16 = 2;
/// v9: flexible; v10+ adds leader-discovery fields StrataMQ does not speak yet.
const PRODUCE_VERSION: i16 = 9;
/// How long a Produce (acks=all) may wait on the broker.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// How long a Fetch may wait on the broker for `min_bytes` (1) to arrive.
const FETCH_WAIT_MS_MAX: i32 = 500;
/// Largest response accepted.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {secs} s", secs = REQUEST_TIMEOUT.as_secs())]
    Timeout { addr: String },
    #[error("{addr} sent a malformed response: {reason}")]
    Malformed { addr: String, reason: String },
    #[error("{what}: {code} ({message})")]
    Kafka {
        what: String,
        code: String,
        message: String,
    },
    /// Metadata says the topic does not exist. Permanent: a wrong name, not a bad broker.
    #[error("topic `{topic}` does not exist on {addr}")]
    UnknownTopic { addr: String, topic: String },
}

/// ListOffsets' special timestamps (KIP-79): the offset after the last record, and the first.
pub const OFFSET_LATEST: i64 = -1;
pub const OFFSET_EARLIEST: i64 = -2;

/// Where a topic's partitions live, as Metadata describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    pub topic: String,
    /// `(partition, leader id)`, sorted by partition; a leader of -1 means none right now.
    pub partitions: Vec<(i32, i32)>,
    /// `(broker id, host:port)` of every broker Metadata listed.
    pub brokers: Vec<(i32, String)>,
}

impl TopicLayout {
    /// The `host:port` of `partition`'s leader, if it has one Metadata listed.
    pub fn leader_addr(&self, partition: i32) -> Option<&str> {
        let (_, leader) = self.partitions.iter().find(|(p, _)| *p == partition)?;
        self.brokers
            .iter()
            .find(|(id, _)| id == leader)
            .map(|(_, addr)| addr.as_str())
    }
}

/// One partition's answer to ListOffsets: an offset (-1: no record at or after the timestamp)
/// or a Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedOffset {
    pub partition: i32,
    pub error_code: i16,
    pub offset: i64,
}

/// One partition's answer to Fetch: concatenated record batches as the broker stored them
/// (the last one possibly cut short by the byte limit), or a Kafka error code.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
}

/// One topic as Metadata and ListOffsets describe it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicDescription {
    pub name: String,
    pub id: String,
    pub partitions: Vec<PartitionDescription>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionDescription {
    pub partition: i32,
    pub leader: i32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
}

pub struct AdminClient {
    addr: String,
    stream: Box<dyn Stream>,
    correlation_id: i32,
}

/// A plain TCP or a TLS connection.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// How the CLI reaches a secured Kafka listener; read from the environment so every command
/// (topic, produce, consume, user, export) works unchanged against one:
/// `STRATA_KAFKA_TLS_CA` (PEM file of the CA to trust: the connection uses TLS),
/// `STRATA_KAFKA_SASL_MECHANISM` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`),
/// `STRATA_KAFKA_SASL_USER`, `STRATA_KAFKA_SASL_PASSWORD`.
#[derive(Default)]
pub struct ClientSecurity {
    pub tls_ca: Option<std::path::PathBuf>,
    pub sasl: Option<(super::auth::Mechanism, String, String)>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("tls_ca", &self.tls_ca)
            .field("sasl_user", &self.sasl.as_ref().map(|s| &s.1))
            .finish_non_exhaustive()
    }
}

impl ClientSecurity {
    pub fn from_env() -> Result<Self, ClientError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let bad = |message: String| ClientError::Kafka {
            what: "client security settings".into(),
            code: "INVALID_CONFIG".into(),
            message,
        };
        let sasl = match var("STRATA_KAFKA_SASL_MECHANISM") {
            None => None,
            Some(m) => {
                let mech = super::auth::Mechanism::parse(&m).ok_or_else(|| {
                    bad(format!(
                        "STRATA_KAFKA_SASL_MECHANISM: unknown mechanism `{m}`"
                    ))
                })?;
                let user = var("STRATA_KAFKA_SASL_USER")
                    .ok_or_else(|| bad("STRATA_KAFKA_SASL_USER is not set".into()))?;
                let password = var("STRATA_KAFKA_SASL_PASSWORD")
                    .ok_or_else(|| bad("STRATA_KAFKA_SASL_PASSWORD is not set".into()))?;
                Some((mech, user, password))
            }
        };
        Ok(Self {
            tls_ca: var("STRATA_KAFKA_TLS_CA").map(Into::into),
            sasl,
        })
    }
}

fn tls_connector(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls;
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: bad PEM: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Kafka's OFFSET_OUT_OF_RANGE: the fetch offset is below the log start or past the end.
pub const ERROR_OFFSET_OUT_OF_RANGE: i16 = 1;

/// Whether Kafka calls an error code retriable (a leader moving, a timeout, …).
pub fn error_is_retriable(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable())
}

/// The name of a Kafka error code, as `ResponseError` spells it.
pub fn error_name(code: i16) -> String {
    ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| format!("error code {code}"))
}

fn kafka_error(what: String, code: i16, message: Option<&StrBytes>) -> ClientError {
    ClientError::Kafka {
        what,
        code: error_name(code),
        message: message.map(|m| m.to_string()).unwrap_or_default(),
    }
}

impl AdminClient {
    /// Connects with the security settings of the environment ([`ClientSecurity::from_env`]).
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        Self::connect_with(addr, &ClientSecurity::from_env()?).await
    }

    /// Connects, then completes TLS and SASL as `security` asks.
    pub async fn connect_with(addr: &str, security: &ClientSecurity) -> Result<Self, ClientError> {
        let tcp = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.to_string(),
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let connect_err = |message: String| ClientError::Connect {
            addr: addr.to_string(),
            source: std::io::Error::other(message),
        };
        let stream: Box<dyn Stream> = match &security.tls_ca {
            None => Box::new(tcp),
            Some(ca) => {
                let connector = tls_connector(ca).map_err(connect_err)?;
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let server_name =
                    tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
                        .map_err(|e| connect_err(format!("server name `{host}`: {e}")))?;
                let tls =
                    tokio::time::timeout(REQUEST_TIMEOUT, connector.connect(server_name, tcp))
                        .await
                        .map_err(|_| ClientError::Timeout {
                            addr: addr.to_string(),
                        })?
                        .map_err(|e| connect_err(format!("TLS: {e}")))?;
                Box::new(tls)
            }
        };
        let mut client = Self {
            addr: addr.to_string(),
            stream,
            correlation_id: 0,
        };
        if let Some((mech, user, password)) = &security.sasl {
            client.authenticate(*mech, user, password).await?;
        }
        Ok(client)
    }

    /// SaslHandshake v1, then SaslAuthenticate until done.
    async fn authenticate(
        &mut self,
        mech: super::auth::Mechanism,
        user: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        use super::auth::Mechanism;
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mech.name()));
        let response: SaslHandshakeResponse =
            self.call(ApiKey::SaslHandshake, 1, &handshake).await?;
        if response.error_code != 0 {
            return Err(kafka_error(
                format!("SASL handshake ({})", mech.name()),
                response.error_code,
                None,
            ));
        }
        let failed = |r: &SaslAuthenticateResponse| {
            kafka_error(
                format!("SASL authentication as `{user}`"),
                r.error_code,
                r.error_message.as_ref(),
            )
        };
        match mech {
            Mechanism::Plain => {
                let token = format!("\0{user}\0{password}");
                let r = self.sasl_token(token.into_bytes()).await?;
                if r.error_code != 0 {
                    return Err(failed(&r));
                }
            }
            Mechanism::Scram(m) => {
                use rand::Rng;
                let nonce: String = rand::thread_rng()
                    .sample_iter(&rand::distributions::Alphanumeric)
                    .take(24)
                    .map(char::from)
                    .collect();
                let first = super::scram::client_first(user, &nonce);
                let exchange = super::scram::ClientExchange {
                    mech: m,
                    client_first_bare: first[3..].to_string(),
                    nonce,
                };
                let r = self.sasl_token(first.into_bytes()).await?;
                if r.error_code != 0 {
                    return Err(failed(&r));
                }
                let (last, expected) = exchange
                    .respond(password.as_bytes(), &r.auth_bytes)
                    .map_err(|e| ClientError::Malformed {
                        addr: self.addr.clone(),
                        reason: e.to_string(),
                    })?;
                let r = self.sasl_token(last.into_bytes()).await?;
                if r.error_code != 0 {
                    return Err(failed(&r));
                }
                if !super::scram::ct_eq(&r.auth_bytes, expected.as_bytes()) {
                    return Err(ClientError::Malformed {
                        addr: self.addr.clone(),
                        reason: "the server's SCRAM signature does not verify".into(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn sasl_token(
        &mut self,
        token: Vec<u8>,
    ) -> Result<SaslAuthenticateResponse, ClientError> {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
        self.call(ApiKey::SaslAuthenticate, 2, &request).await
    }

    /// Every SCRAM user and its `(mechanism, iterations)` (DescribeUserScramCredentials).
    pub async fn describe_users(
        &mut self,
    ) -> Result<Vec<(String, Vec<(String, i32)>)>, ClientError> {
        let request = DescribeUserScramCredentialsRequest::default().with_users(None);
        let response: DescribeUserScramCredentialsResponse = self
            .call(ApiKey::DescribeUserScramCredentials, 0, &request)
            .await?;
        if response.error_code != 0 {
            return Err(kafka_error(
                "describe users".into(),
                response.error_code,
                response.error_message.as_ref(),
            ));
        }
        Ok(response
            .results
            .into_iter()
            .map(|r| {
                let creds = r
                    .credential_infos
                    .iter()
                    .map(|c| {
                        let name = super::auth::mechanism_from_code(c.mechanism).map_or_else(
                            || format!("mechanism {}", c.mechanism),
                            |m| m.name().to_string(),
                        );
                        (name, c.iterations)
                    })
                    .collect();
                (r.user.to_string(), creds)
            })
            .collect())
    }

    /// Creates or replaces `user`'s credential for `mech`: the salted password is computed
    /// here, as Kafka's tools do; the password itself never leaves this process.
    pub async fn upsert_user(
        &mut self,
        user: &str,
        mech: strata_meta::ScramMechanism,
        password: &str,
        iterations: u32,
    ) -> Result<(), ClientError> {
        use rand::Rng;
        let salt: [u8; 16] = rand::thread_rng().gen();
        let salted = super::scram::salted_password(mech, password.as_bytes(), &salt, iterations);
        let request = AlterUserScramCredentialsRequest::default().with_upsertions(vec![
            ScramCredentialUpsertion::default()
                .with_name(StrBytes::from_string(user.to_string()))
                .with_mechanism(super::auth::mechanism_code(mech))
                .with_iterations(iterations as i32)
                .with_salt(Bytes::copy_from_slice(&salt))
                .with_salted_password(Bytes::from(salted)),
        ]);
        self.alter_users(request, &format!("add user `{user}`"))
            .await
    }

    /// Deletes `user`'s credential for `mech`.
    pub async fn delete_user(
        &mut self,
        user: &str,
        mech: strata_meta::ScramMechanism,
    ) -> Result<(), ClientError> {
        let request = AlterUserScramCredentialsRequest::default().with_deletions(vec![
            ScramCredentialDeletion::default()
                .with_name(StrBytes::from_string(user.to_string()))
                .with_mechanism(super::auth::mechanism_code(mech)),
        ]);
        self.alter_users(request, &format!("delete user `{user}`"))
            .await
    }

    async fn alter_users(
        &mut self,
        request: AlterUserScramCredentialsRequest,
        what: &str,
    ) -> Result<(), ClientError> {
        let response: AlterUserScramCredentialsResponse = self
            .call(ApiKey::AlterUserScramCredentials, 0, &request)
            .await?;
        for r in response.results {
            if r.error_code != 0 {
                return Err(kafka_error(
                    what.to_string(),
                    r.error_code,
                    r.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }

    /// CreateAcls: every binding, or the first refusal.
    pub async fn create_acls(
        &mut self,
        acls: &[strata_meta::acl::AclBinding],
    ) -> Result<(), ClientError> {
        use super::acl_handlers as wire;
        let request = kafka_protocol::messages::CreateAclsRequest::default()
            .with_creations(acls.iter().map(wire::creation).collect());
        let response: kafka_protocol::messages::CreateAclsResponse = self
            .call(ApiKey::CreateAcls, ACLS_VERSION, &request)
            .await?;
        match response.results.iter().find(|r| r.error_code != 0) {
            Some(r) => Err(kafka_error(
                "create ACLs".into(),
                r.error_code,
                r.error_message.as_ref(),
            )),
            None => Ok(()),
        }
    }

    /// DescribeAcls: the bindings the filter matches.
    pub async fn describe_acls(
        &mut self,
        filter: &strata_meta::acl::AclBindingFilter,
    ) -> Result<Vec<strata_meta::acl::AclBinding>, ClientError> {
        use super::acl_handlers as wire;
        let response: kafka_protocol::messages::DescribeAclsResponse = self
            .call(
                ApiKey::DescribeAcls,
                ACLS_VERSION,
                &wire::describe_request(filter),
            )
            .await?;
        if response.error_code != 0 {
            return Err(kafka_error(
                "describe ACLs".into(),
                response.error_code,
                response.error_message.as_ref(),
            ));
        }
        Ok(wire::described(&response))
    }

    /// DeleteAcls with one filter: the bindings removed.
    pub async fn delete_acls(
        &mut self,
        filter: &strata_meta::acl::AclBindingFilter,
    ) -> Result<Vec<strata_meta::acl::AclBinding>, ClientError> {
        use super::acl_handlers as wire;
        let request = kafka_protocol::messages::DeleteAclsRequest::default()
            .with_filters(vec![wire::delete_filter(filter)]);
        let response: kafka_protocol::messages::DeleteAclsResponse = self
            .call(ApiKey::DeleteAcls, ACLS_VERSION, &request)
            .await?;
        let mut removed = Vec::new();
        for r in &response.filter_results {
            if r.error_code != 0 {
                return Err(kafka_error(
                    "delete ACLs".into(),
                    r.error_code,
                    r.error_message.as_ref(),
                ));
            }
            removed.extend(wire::deleted(r));
        }
        Ok(removed)
    }

    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        self.correlation_id += 1;
        let malformed = |reason: String| ClientError::Malformed {
            addr: self.addr.clone(),
            reason,
        };
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("strata-cli")));
        header
            .encode(&mut buf, key.request_header_version(version))
            .and_then(|()| request.encode(&mut buf, version))
            .map_err(|e| malformed(format!("cannot encode request: {e}")))?;
        let size = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&size.to_be_bytes());
        let addr = self.addr.clone();
        let io = |source| ClientError::Io {
            addr: addr.clone(),
            source,
        };
        let exchange = async {
            self.stream.write_all(&buf).await.map_err(io)?;
            let size = self.stream.read_i32().await.map_err(io)?;
            if size < 4 || size as usize > RESPONSE_BYTES_MAX {
                return Err(malformed(format!("response size {size}")));
            }
            let mut body = vec![0u8; size as usize];
            self.stream.read_exact(&mut body).await.map_err(io)?;
            Ok(Bytes::from(body))
        };
        let mut body = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
            })??;
        let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
            .map_err(|e| malformed(e.to_string()))?;
        if header.correlation_id != self.correlation_id {
            return Err(malformed(format!(
                "correlation id {} for request {}",
                header.correlation_id, self.correlation_id
            )));
        }
        let response = Resp::decode(&mut body, version).map_err(|e| malformed(e.to_string()))?;
        if body.has_remaining() {
            return Err(malformed(format!("{} trailing bytes", body.remaining())));
        }
        Ok(response)
    }

    pub async fn create_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> Result<(), ClientError> {
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(-1)
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.clone()))
                                .with_value(Some(StrBytes::from_string(v.clone())))
                        })
                        .collect(),
                )]);
        let response: CreateTopicsResponse = self
            .call(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, &request)
            .await?;
        for t in response.topics {
            if t.error_code != 0 {
                return Err(kafka_error(
                    format!("create topic `{topic}`"),
                    t.error_code,
                    t.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }

    pub async fn delete_topic(&mut self, topic: &str) -> Result<(), ClientError> {
        let request = DeleteTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topic_names(vec![name(topic)]);
        let response: DeleteTopicsResponse = self
            .call(ApiKey::DeleteTopics, DELETE_TOPICS_VERSION, &request)
            .await?;
        for r in response.responses {
            if r.error_code != 0 {
                return Err(kafka_error(
                    format!("delete topic `{topic}`"),
                    r.error_code,
                    r.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }

    /// Alters a topic: grows it to `partitions` (CreatePartitions) and then sets and deletes
    /// configs (IncrementalAlterConfigs), each step only when asked for. With `validate_only`
    /// the broker checks everything and changes nothing.
    pub async fn alter_topic(
        &mut self,
        topic: &str,
        partitions: Option<i32>,
        set: &[(String, String)],
        delete: &[String],
        validate_only: bool,
    ) -> Result<(), ClientError> {
        if let Some(count) = partitions {
            let request = CreatePartitionsRequest::default()
                .with_timeout_ms(30_000)
                .with_validate_only(validate_only)
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(name(topic))
                    .with_count(count)
                    .with_assignments(None)]);
            let response: CreatePartitionsResponse = self
                .call(
                    ApiKey::CreatePartitions,
                    CREATE_PARTITIONS_VERSION,
                    &request,
                )
                .await?;
            for r in response.results {
                if r.error_code != 0 {
                    return Err(kafka_error(
                        format!("add partitions to `{topic}`"),
                        r.error_code,
                        r.error_message.as_ref(),
                    ));
                }
            }
        }
        if set.is_empty() && delete.is_empty() {
            return Ok(());
        }
        // Operation codes: 0 SET, 1 DELETE.
        let configs = set
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_config_operation(0)
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .chain(delete.iter().map(|k| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_config_operation(1)
            }))
            .collect();
        let request = IncrementalAlterConfigsRequest::default()
            .with_validate_only(validate_only)
            .with_resources(vec![AlterConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(StrBytes::from_string(topic.to_string()))
                .with_configs(configs)]);
        let response: IncrementalAlterConfigsResponse = self
            .call(
                ApiKey::IncrementalAlterConfigs,
                INCREMENTAL_ALTER_CONFIGS_VERSION,
                &request,
            )
            .await?;
        for r in response.responses {
            if r.error_code != 0 {
                return Err(kafka_error(
                    format!("alter configs of `{topic}`"),
                    r.error_code,
                    r.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }

    /// Every topic (when `topics` is empty) or the named ones, with offsets.
    pub async fn describe(
        &mut self,
        topics: &[String],
    ) -> Result<Vec<TopicDescription>, ClientError> {
        let request = MetadataRequest::default()
            .with_topics(if topics.is_empty() {
                None
            } else {
                Some(
                    topics
                        .iter()
                        .map(|t| MetadataRequestTopic::default().with_name(Some(name(t))))
                        .collect(),
                )
            })
            .with_allow_auto_topic_creation(false);
        let metadata: MetadataResponse = self
            .call(ApiKey::Metadata, METADATA_VERSION, &request)
            .await?;
        let mut out = Vec::new();
        for t in metadata.topics {
            let topic = t.name.map(|n| n.0.to_string()).unwrap_or_default();
            if t.error_code != 0 {
                return Err(kafka_error(
                    format!("describe topic `{topic}`"),
                    t.error_code,
                    None,
                ));
            }
            let mut partitions: Vec<PartitionDescription> = t
                .partitions
                .iter()
                .map(|p| PartitionDescription {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    log_start_offset: -1,
                    high_watermark: -1,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            for (timestamp, earliest) in [(-2i64, true), (-1i64, false)] {
                let request = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![ListOffsetsTopic::default()
                        .with_name(name(&topic))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p.partition)
                                        .with_timestamp(timestamp)
                                })
                                .collect(),
                        )]);
                let offsets: ListOffsetsResponse = self
                    .call(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request)
                    .await?;
                for r in offsets.topics.iter().flat_map(|t| t.partitions.iter()) {
                    if let Some(p) = partitions
                        .iter_mut()
                        .find(|p| p.partition == r.partition_index)
                    {
                        if earliest {
                            p.log_start_offset = r.offset;
                        } else {
                            p.high_watermark = r.offset;
                        }
                    }
                }
            }
            out.push(TopicDescription {
                name: topic,
                id: t.topic_id.to_string(),
                partitions,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One topic's partitions, their leaders and the brokers' addresses. A topic Metadata does
    /// not know is [`ClientError::UnknownTopic`] (never auto-created).
    pub async fn topic_layout(&mut self, topic: &str) -> Result<TopicLayout, ClientError> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name(topic)))
            ]))
            .with_allow_auto_topic_creation(false);
        let metadata: MetadataResponse = self
            .call(ApiKey::Metadata, METADATA_VERSION, &request)
            .await?;
        let Some(t) = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        else {
            return Err(ClientError::UnknownTopic {
                addr: self.addr.clone(),
                topic: topic.to_string(),
            });
        };
        match ResponseError::try_from_code(t.error_code) {
            None => {}
            Some(ResponseError::UnknownTopicOrPartition | ResponseError::InvalidTopicException) => {
                return Err(ClientError::UnknownTopic {
                    addr: self.addr.clone(),
                    topic: topic.to_string(),
                })
            }
            Some(_) => {
                return Err(kafka_error(
                    format!("metadata of topic `{topic}`"),
                    t.error_code,
                    None,
                ))
            }
        }
        let mut partitions: Vec<(i32, i32)> = t
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect();
        partitions.sort_unstable();
        let brokers = metadata
            .brokers
            .iter()
            .map(|b| {
                let host = b.host.as_str();
                // An IPv6 literal needs brackets to be joined with a port.
                let addr = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]:{}", b.port)
                } else {
                    format!("{host}:{}", b.port)
                };
                (b.node_id.0, addr)
            })
            .collect();
        Ok(TopicLayout {
            topic: topic.to_string(),
            partitions,
            brokers,
        })
    }

    /// ListOffsets for `(partition, timestamp)` pairs of one topic, sent to this broker (which
    /// must lead them). `timestamp` is milliseconds since the epoch — the answer is the first
    /// offset whose timestamp is at or after it — or [`OFFSET_LATEST`] / [`OFFSET_EARLIEST`].
    /// Each partition may appear once per call.
    pub async fn list_offsets(
        &mut self,
        topic: &str,
        queries: &[(i32, i64)],
    ) -> Result<Vec<ListedOffset>, ClientError> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(
                    queries
                        .iter()
                        .map(|(p, ts)| {
                            ListOffsetsPartition::default()
                                .with_partition_index(*p)
                                .with_timestamp(*ts)
                        })
                        .collect(),
                )]);
        let response: ListOffsetsResponse = self
            .call(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request)
            .await?;
        let mut out = Vec::with_capacity(queries.len());
        for (partition, _) in queries {
            let answer = response
                .topics
                .iter()
                .filter(|t| t.name.0.as_str() == topic)
                .flat_map(|t| t.partitions.iter())
                .find(|r| r.partition_index == *partition)
                .ok_or_else(|| ClientError::Malformed {
                    addr: self.addr.clone(),
                    reason: format!("ListOffsets response lacks partition {topic}/{partition}"),
                })?;
            out.push(ListedOffset {
                partition: *partition,
                error_code: answer.error_code,
                offset: answer.offset,
            });
        }
        Ok(out)
    }

    /// Produces `records` (`(key, value)`, timestamped `timestamp_ms`) to one partition as one
    /// uncompressed record batch (v2, no producer id), with acks=all. Returns the base offset
    /// the broker assigned. A Kafka error (not the leader, unknown topic, too large) is
    /// [`ClientError::Kafka`], its code kept in the message.
    pub async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: &[(Option<Bytes>, Option<Bytes>)],
        timestamp_ms: i64,
    ) -> Result<i64, ClientError> {
        let records: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, (key, value))| {
                crate::records::plain_record(
                    i as i64,
                    timestamp_ms,
                    key.clone(),
                    value.clone(),
                    Default::default(),
                )
            })
            .collect();
        let batch = crate::records::encode_batch(&records).map_err(|e| ClientError::Malformed {
            addr: self.addr.clone(),
            reason: format!("cannot encode a record batch: {e}"),
        })?;
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch.freeze()))])]);
        let response: ProduceResponse = self
            .call(ApiKey::Produce, PRODUCE_VERSION, &request)
            .await?;
        let answer = response
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == partition)
            .ok_or_else(|| ClientError::Malformed {
                addr: self.addr.clone(),
                reason: format!("Produce response lacks partition {topic}/{partition}"),
            })?;
        if answer.error_code != 0 {
            return Err(kafka_error(
                format!("produce to {topic}/{partition}"),
                answer.error_code,
                answer.error_message.as_ref(),
            ));
        }
        Ok(answer.base_offset)
    }

    /// Fetches one partition from `offset`, at most `bytes_max` bytes (the broker returns at
    /// least one whole batch if there is one, even a larger one). Reads uncommitted data: the
    /// broker has no transactions, and a consumer of an exported range wants every record.
    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        bytes_max: i32,
    ) -> Result<FetchedPartition, ClientError> {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(FETCH_WAIT_MS_MAX)
            .with_min_bytes(1)
            .with_max_bytes(bytes_max)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(bytes_max)])]);
        let response: FetchResponse = self.call(ApiKey::Fetch, FETCH_VERSION, &request).await?;
        if response.error_code != 0 {
            return Err(kafka_error(
                format!("fetch {topic}/{partition}"),
                response.error_code,
                None,
            ));
        }
        let data = response
            .responses
            .into_iter()
            .filter(|t| t.topic.0.as_str() == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| ClientError::Malformed {
                addr: self.addr.clone(),
                reason: format!("Fetch response lacks partition {topic}/{partition}"),
            })?;
        Ok(FetchedPartition {
            error_code: data.error_code,
            high_watermark: data.high_watermark,
            log_start_offset: data.log_start_offset,
            records: data.records.unwrap_or_default(),
        })
    }
}

/// A consumer-protocol member assignment (a SyncGroup assignment of protocol type `consumer`)
/// as `(topic, partitions)`; `None` when the bytes are not one (another protocol, or garbage).
/// Empty bytes (no assignment yet) are an empty list.
pub fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16();
    // Later versions only add fields at the end: read them as the newest we know.
    let version = version.clamp(0, 3);
    let decoded = ConsumerProtocolAssignment::decode(&mut buf, version).ok()?;
    Some(
        decoded
            .assigned_partitions
            .into_iter()
            .map(|tp| (tp.topic.0.to_string(), tp.partitions))
            .collect(),
    )
}

/// What a Kafka error code of a topic write means to a caller outside the Kafka front-end
/// (the admin HTTP API maps these to statuses; only `broker/kafka` knows the code table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicWriteError {
    Exists,
    UnknownTopic,
    InvalidPartitions,
    InvalidName,
    InvalidConfig,
    InvalidRequest,
    TimedOut,
    Other,
}

pub fn classify_topic_error(code: i16) -> TopicWriteError {
    match ResponseError::try_from_code(code) {
        Some(ResponseError::TopicAlreadyExists) => TopicWriteError::Exists,
        Some(ResponseError::UnknownTopicOrPartition) => TopicWriteError::UnknownTopic,
        Some(ResponseError::InvalidPartitions) => TopicWriteError::InvalidPartitions,
        Some(ResponseError::InvalidTopicException) => TopicWriteError::InvalidName,
        Some(ResponseError::InvalidConfig) => TopicWriteError::InvalidConfig,
        Some(ResponseError::InvalidRequest) => TopicWriteError::InvalidRequest,
        Some(ResponseError::RequestTimedOut) => TopicWriteError::TimedOut,
        _ => TopicWriteError::Other,
    }
}
