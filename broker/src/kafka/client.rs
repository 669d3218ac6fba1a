//! A minimal Kafka admin client for the `strata topic …` commands.
//!
//! It speaks the same wire protocol as any stock client (through `kafka-protocol`), so the CLI
//! works against any StrataMQ broker — or any Kafka broker — it can reach, and the admin path
//! is exercised exactly as clients exercise it. One request at a time on one connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Versions this client sends: old enough for any broker of the last years, new enough to be
/// flexible (tagged fields) where StrataMQ's floor allows.
const METADATA_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 5;
const DELETE_TOPICS_VERSION: i16 = 4;
const LIST_OFFSETS_VERSION: i16 = 5;
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
    stream: TcpStream,
    correlation_id: i32,
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn kafka_error(what: String, code: i16, message: Option<&StrBytes>) -> ClientError {
    let code_name = ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| format!("error code {code}"));
    ClientError::Kafka {
        what,
        code: code_name,
        message: message.map(|m| m.to_string()).unwrap_or_default(),
    }
}

impl AdminClient {
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.to_string(),
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Self {
            addr: addr.to_string(),
            stream,
            correlation_id: 0,
        })
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
                let request =
                    ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
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
}
