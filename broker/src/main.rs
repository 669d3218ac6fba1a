//! The `strata` binary.

mod cli;

use clap::{Parser, Subcommand};
use cli::{AdminArg, Output, OutputArg};
use std::path::PathBuf;
use std::process::ExitCode;
use strata_broker::config::{self, Overrides};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "StrataMQ: a storage-disaggregated Kafka and MQTT broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Commands {
    /// Run a node: every role (metadata, WAL, broker) on embedded defaults, or the roles and
    /// peers given (a cluster: --node-id, --meta-peers, --wal-peers).
    Start(StartArgs),
    /// Create, list, describe and delete topics on a running broker (over the Kafka protocol).
    #[command(subcommand)]
    Topic(TopicCommand),
    /// The cluster as a node's admin API sees it.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Consumer groups: list, describe (members, lag), reset offsets (over the admin API).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Produce lines from stdin to a topic, one record per line (over the Kafka protocol).
    Produce(ProduceArgs),
    /// Print a topic's records, one value per line (over the Kafka protocol).
    Consume(ConsumeArgs),
    /// Benchmarks and probes (results as JSON on stdout).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Export a topic's records to files in an object store (over the Kafka protocol).
    #[command(subcommand)]
    Export(ExportCommand),
    /// SASL/SCRAM users: add, delete, list (over the Kafka protocol; see docs/security.md).
    #[command(subcommand)]
    User(UserCommand),
    /// Metadata disaster recovery (see docs/operations.md).
    #[command(subcommand)]
    Meta(MetaCommand),
    /// Kafka ACLs: add, list, delete (over the Kafka protocol; see docs/security.md).
    #[command(subcommand)]
    Acl(AclCommand),
    /// MQTT helpers (see docs/security.md).
    #[command(subcommand)]
    Mqtt(MqttCommand),
}

#[derive(Subcommand)]
enum MqttCommand {
    /// Read a password from the first line of stdin and print its PHC argon2id hash, for a
    /// `[[mqtt.users]]` entry's `password_hash`.
    HashPassword,
    /// This node's MQTT clients: connected ones and offline persistent sessions (over the
    /// admin API).
    Clients {
        #[command(flatten)]
        admin: AdminArg,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum AclCommand {
    /// Create ACLs: each resource x principal x operation given.
    Add {
        #[command(flatten)]
        args: cli::acl::AclArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List the ACLs the flags match (all without flags).
    List {
        #[command(flatten)]
        args: cli::acl::AclArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete the ACLs the flags match; prints what was removed.
    Delete {
        #[command(flatten)]
        args: cli::acl::AclArgs,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum MetaCommand {
    /// Rebuild a metadata store from the snapshots and log the meta leader uploaded to object
    /// storage, for a new single-node meta group. Run it with the node stopped. Exit 2 when a
    /// metadata store already exists there (without --force); exit 1 when the store holds no
    /// usable backup.
    Restore {
        #[command(flatten)]
        args: cli::meta::RestoreArgs,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create or replace a user's SCRAM credential. The password is read from a prompt without
    /// echo, or from stdin with --password-stdin.
    Add {
        #[command(flatten)]
        args: cli::user::AddArgs,
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete a user's credential for one mechanism, or all of them.
    Delete {
        name: String,
        #[arg(long, value_parser = cli::user::parse_mechanism)]
        mechanism: Option<strata_meta::ScramMechanism>,
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List users with their mechanisms and iterations (never keys or passwords).
    List {
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Write a topic's records, over a time range, as Parquet files to an object store.
    ///
    /// Each partition's range is the offsets [ListOffsets(--from-time), ListOffsets(--to-time)):
    /// from the first record whose timestamp is at or after --from-time (the log start if
    /// absent) up to, not including, the first record whose timestamp is at or after
    /// --to-time (the high watermark at start if absent or if no record is that late). A
    /// partition with nothing in range writes no file.
    ///
    /// Files: <topic>/partition=<p>/<first offset>-<last offset>.parquet (offsets 20 digits,
    /// inclusive), at most ~1,000,000 rows or ~128 MiB of input each, zstd-compressed, with
    /// columns partition, offset, timestamp (ms, UTC), timestamp_type (0 CreateTime, 1
    /// LogAppendTime), key, value, headers (list of {key, value}). Progress goes to stderr,
    /// each written key to stdout. Exit 2: bad arguments (unknown topic or partition, bad
    /// time or URL); exit 1: the broker or the store failed.
    Parquet(ExportParquetArgs),
}

#[derive(clap::Args)]
struct ExportParquetArgs {
    /// The topic to export.
    #[arg(long)]
    topic: String,
    /// Start of the range: RFC 3339 (2026-05-01T00:00:00Z) or milliseconds since the epoch.
    #[arg(long, value_parser = strata_broker::export::parse_time)]
    from_time: Option<i64>,
    /// End of the range (exclusive): RFC 3339 or milliseconds since the epoch.
    #[arg(long, value_parser = strata_broker::export::parse_time)]
    to_time: Option<i64>,
    /// Where to write: an object-store URL (fs:///abs/dir, s3://bucket/prefix?endpoint=…,
    /// gcs://bucket, azblob://container?account_name=…, webhdfs://host:port/path).
    #[arg(long = "to")]
    to: String,
    /// Only these partitions, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    partitions: Option<Vec<i32>>,
    #[command(flatten)]
    bootstrap: Bootstrap,
}

#[derive(clap::Args)]
struct Bootstrap {
    /// A broker's Kafka listener, host:port.
    #[arg(long, default_value = "127.0.0.1:9092", env = "STRATA_BOOTSTRAP")]
    bootstrap: String,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions (-1: the broker's default).
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        partitions: i32,
        /// A topic config, KEY=VALUE (Kafka names: retention.ms, retention.bytes, …); repeatable.
        #[arg(long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List topics with their partition and message counts.
    List {
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Describe topics (all when none named): partitions, leaders, offsets.
    Describe {
        names: Vec<String>,
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Alter a topic: add partitions, set or delete configs (Kafka names).
    #[command(group = clap::ArgGroup::new("change").required(true).multiple(true)
        .args(["partitions", "set", "delete"]))]
    Alter {
        name: String,
        /// Grow the topic to this many partitions (never fewer than it has).
        #[arg(long)]
        partitions: Option<i32>,
        /// Set a config, KEY=VALUE (retention.ms, retention.bytes, cleanup.policy); repeatable.
        #[arg(long = "set", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Delete a config (back to the broker default); repeatable.
        #[arg(long = "delete")]
        delete: Vec<String>,
        /// Check the change on the broker without applying it.
        #[arg(long)]
        validate_only: bool,
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete a topic.
    Delete {
        name: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The meta (raft) group: its members, leader and log positions; `add ID@HOST:PORT` and
    /// `remove ID` change its voters at run time.
    Meta(cli::meta_voters::MetaArgs),
    /// This node, the brokers (alive, leases, partitions led), the meta leader and the WAL.
    Status {
        #[command(flatten)]
        admin: AdminArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Drain a broker: it gets no new partitions and the ones it leads move to the other live
    /// brokers (only metadata and the WAL tail move; history stays where it is).
    Drain {
        /// The broker's node id.
        node: u64,
        /// Stop draining it (moves not yet completed are called off).
        #[arg(long)]
        undo: bool,
        /// Wait until the broker leads no partition, with a progress line on stderr; exit 1
        /// when the moves stall or take longer than --timeout-secs.
        #[arg(long, conflicts_with = "undo")]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value_t = 300, requires = "wait")]
        timeout_secs: u64,
        #[command(flatten)]
        admin: AdminArg,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// List consumer groups with their state and total lag.
    List {
        #[command(flatten)]
        admin: AdminArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Describe a group: members and their assignments, committed offsets, lag.
    Describe {
        group: String,
        #[command(flatten)]
        admin: AdminArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Move a group's committed offsets for one topic. Refused while the group has live
    /// members (stop its consumers first). Exactly one --to-… flag.
    #[command(group(clap::ArgGroup::new("target").required(true).multiple(false)
        .args(["to_earliest", "to_latest", "to_offset", "to_datetime"])))]
    ResetOffsets {
        group: String,
        /// The topic whose offsets move.
        #[arg(long)]
        topic: String,
        /// Only these partitions, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        partitions: Option<Vec<u32>>,
        /// To each partition's log start.
        #[arg(long)]
        to_earliest: bool,
        /// To each partition's end (skip everything not yet consumed).
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped into each partition's range).
        #[arg(long, value_name = "OFFSET")]
        to_offset: Option<u64>,
        /// To the first record at or after this time: RFC 3339 or ms since the epoch.
        #[arg(long, value_name = "TIME", value_parser = strata_broker::export::parse_time)]
        to_datetime: Option<i64>,
        /// Show the new offsets without writing them.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        admin: AdminArg,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(clap::Args)]
struct ProduceArgs {
    topic: String,
    /// Split each line at the first SEP into key and value (a line without it has no key).
    #[arg(long, value_name = "SEP")]
    key_sep: Option<String>,
    /// Write every record to this partition (default: by key, keyless lines round-robin).
    #[arg(long)]
    partition: Option<i32>,
    #[command(flatten)]
    bootstrap: Bootstrap,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("start").multiple(false).args(["from_beginning", "offset"])))]
struct ConsumeArgs {
    topic: String,
    /// Start at each partition's log start (default: at its end, printing only new records).
    #[arg(long)]
    from_beginning: bool,
    /// Start at this offset (needs --partition).
    #[arg(long, requires = "partition")]
    offset: Option<u64>,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<i32>,
    /// Stop after this many records (default: never).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print each record's key before its value, separated by --key-sep.
    #[arg(long)]
    print_key: bool,
    /// Separator between key and value with --print-key.
    #[arg(long, value_name = "SEP", default_value = "\t")]
    key_sep: String,
    /// Give up (exit 1) when --count records have not arrived within this many ms.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    #[command(flatten)]
    bootstrap: Bootstrap,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

#[derive(Subcommand)]
enum BenchCommand {
    /// fdatasync latency (4 KiB) and fsynced sequential write bandwidth (1 MiB) of a directory.
    Disk {
        /// Directory on the device to measure (the WAL's device).
        #[arg(long, default_value = "./strata-data")]
        dir: PathBuf,
        /// Seconds per probe.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Raw GET bandwidth of an object store: every object under a prefix, in ranged GETs.
    StoreRead {
        /// Store URL (as `start --object-store`).
        #[arg(long)]
        object_store: String,
        #[arg(long, default_value = "segments/")]
        prefix: String,
        /// GETs in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Bytes per GET.
        #[arg(long, default_value_t = 1 << 20)]
        range_bytes: u64,
    },
    /// MQTT load generator (any 3.1.1 broker): qos1, fanout, latency, idle connections.
    Mqtt(cli::bench_mqtt::MqttArgs),
}

#[derive(clap::Args)]
struct StartArgs {
    /// Root of local state (WAL, metadata, cache; and objects when the store is the default).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The WAL's directory (default <data-dir>/wal): give it its own fast device.
    #[arg(long)]
    wal_dir: Option<PathBuf>,
    /// The read cache's disk tier (default <data-dir>/cache): may be wiped while stopped.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Object store: fs:///path, memory://, s3://bucket?endpoint=http://host:port&region=…,
    /// gcs://bucket, azblob://container?account_name=…, webhdfs://host:port/path.
    #[arg(long)]
    object_store: Option<String>,
    /// Kafka listener, host:port.
    #[arg(long)]
    kafka_listen: Option<String>,
    /// Admin HTTP listener (health, metrics, REST), host:port.
    #[arg(long)]
    admin_listen: Option<String>,
    /// MQTT listener (3.1.1 and 5.0 over TCP), host:port.
    #[arg(long)]
    mqtt_listen: Option<String>,
    /// MQTT over WebSocket listener (path /mqtt), host:port; off unless set.
    #[arg(long)]
    mqtt_ws_listen: Option<String>,
    /// MQTT over TLS listener, host:port (needs mqtt.tls_cert_file and mqtt.tls_key_file).
    #[arg(long)]
    mqtt_tls_listen: Option<String>,
    /// MQTT over QUIC listener, UDP host:port (ALPN mqtt; needs mqtt.tls_cert_file and
    /// mqtt.tls_key_file); off unless set. The usual port is 14567.
    #[arg(long)]
    mqtt_quic_listen: Option<String>,
    /// This node's id: Kafka broker id, raft node id, WAL stream id. Unique in a cluster.
    #[arg(long)]
    node_id: Option<u64>,
    /// Roles this process runs, comma-separated: meta, wal, broker (default: all three).
    #[arg(long)]
    roles: Option<String>,
    /// The Kafka address clients are told in Metadata, host:port (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Meta gRPC listener of a cluster member, host:port (default 127.0.0.1:1228).
    #[arg(long)]
    meta_listen: Option<String>,
    /// Initial meta voters, id@host:port,… (this node included). Unset: single-node metadata.
    #[arg(long)]
    meta_peers: Option<String>,
    /// WAL replication listener, host:port (default 127.0.0.1:1778).
    #[arg(long)]
    wal_listen: Option<String>,
    /// WAL replicas every broker writes to, host:port,… (the same list on every node). Unset:
    /// the single-node WAL.
    #[arg(long)]
    wal_peers: Option<String>,
    /// TOML config file; `STRATA_<SECTION>_<KEY>` variables and these flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log lines on stderr: text or json (`log.format`).
    #[arg(long)]
    log_format: Option<String>,
    /// Export traces over OTLP/HTTP to this collector URL (`telemetry.otlp_endpoint`).
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

/// Exit codes: 0 clean stop, 1 bad environment, 2 bad configuration, 3 corrupt local data.
fn main() -> ExitCode {
    strata_broker::log::cache::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Commands::Start(args) => start(args),
        Commands::Topic(cmd) => topic(cmd),
        Commands::Cluster(cmd) => cluster(cmd),
        Commands::Group(cmd) => group(cmd),
        Commands::Produce(args) => produce(args),
        Commands::Consume(args) => consume(args),
        Commands::Export(ExportCommand::Parquet(args)) => export_parquet(args),
        Commands::User(cmd) => user(cmd),
        Commands::Meta(MetaCommand::Restore { args, output }) => meta_restore(args, output.output),
        Commands::Mqtt(MqttCommand::HashPassword) => mqtt_hash_password(),
        Commands::Mqtt(MqttCommand::Clients { admin, output }) => {
            run_cli(cli::admin::mqtt_clients(&admin.admin, output.output))
        }
        Commands::Acl(cmd) => match cmd {
            AclCommand::Add { args, output } => run_cli(cli::acl::add(args, output.output)),
            AclCommand::List { args, output } => run_cli(cli::acl::list(args, output.output)),
            AclCommand::Delete { args, output } => run_cli(cli::acl::delete(args, output.output)),
        },
        Commands::Bench(BenchCommand::StoreRead {
            object_store,
            prefix,
            concurrency,
            range_bytes,
        }) => bench_store_read(&object_store, &prefix, concurrency, range_bytes),
        Commands::Bench(BenchCommand::Mqtt(args)) => run_cli(cli::bench_mqtt::run(args)),
        Commands::Bench(BenchCommand::Disk { dir, seconds }) => print_report(
            strata_broker::bench::disk(&dir, seconds)
                .map_err(|err| format!("disk probe in {}: {err}", dir.display())),
        ),
    }
}

fn bench_store_read(url: &str, prefix: &str, concurrency: usize, range_bytes: u64) -> ExitCode {
    let store = match strata_tiering::ObjectStore::from_url(url) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("strata: error: {err}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    print_report(rt.block_on(strata_broker::bench::store_read(
        &store,
        prefix,
        concurrency,
        range_bytes,
    )))
}

/// Prints a report as pretty JSON on stdout (exit 0), or the error on stderr (exit 1).
fn print_report<T: serde::Serialize, E: std::fmt::Display>(result: Result<T, E>) -> ExitCode {
    match result {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("strata: error: {err}");
            ExitCode::from(1)
        }
    }
}

/// Builds a tokio runtime; on failure says so on stderr and gives the exit code (1).
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|err| {
        eprintln!("strata: error: cannot start the async runtime: {err}");
        ExitCode::from(1)
    })
}

fn meta_restore(args: cli::meta::RestoreArgs, output: Output) -> ExitCode {
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(cli::meta::restore(args, output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => err.exit(),
    }
}

fn start(args: StartArgs) -> ExitCode {
    let overrides = Overrides {
        data_dir: args.data_dir,
        wal_dir: args.wal_dir,
        cache_dir: args.cache_dir,
        object_store: args.object_store,
        kafka_listen: args.kafka_listen,
        admin_listen: args.admin_listen,
        mqtt_listen: args.mqtt_listen,
        mqtt_ws_listen: args.mqtt_ws_listen,
        mqtt_tls_listen: args.mqtt_tls_listen,
        mqtt_quic_listen: args.mqtt_quic_listen,
        node_id: args.node_id,
        roles: args.roles,
        advertise: args.advertise,
        meta_listen: args.meta_listen,
        meta_peers: args.meta_peers,
        wal_listen: args.wal_listen,
        wal_peers: args.wal_peers,
        log_format: args.log_format,
        otlp_endpoint: args.otlp_endpoint,
    };
    let config = match config::load(args.config.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("strata: error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // The OTLP batch processor's task runs on the runtime; its final flush after `block_on`.
    let telemetry = {
        let _runtime = runtime.enter();
        strata_broker::telemetry::init(config.log_format, config.telemetry.as_ref())
    };
    let result = runtime.block_on(strata_broker::node::run(config));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("strata: error: {err}");
            ExitCode::from(err.exit_code() as u8)
        }
    }
}

/// Runs a `strata topic …` command. Exit 1 when the broker refuses or cannot be reached.
fn topic(cmd: TopicCommand) -> ExitCode {
    use strata_broker::kafka::client::AdminClient;
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        match cmd {
            TopicCommand::Create {
                name,
                partitions,
                configs,
                bootstrap,
                output,
            } => {
                AdminClient::connect(&bootstrap.bootstrap)
                    .await?
                    .create_topic(&name, partitions, &configs)
                    .await?;
                match output.output {
                    Output::Table => println!("created topic {name}"),
                    Output::Json => cli::print_json(&serde_json::json!({ "created": name })),
                }
            }
            TopicCommand::List { bootstrap, output } => {
                let topics = AdminClient::connect(&bootstrap.bootstrap)
                    .await?
                    .describe(&[])
                    .await?;
                match output.output {
                    Output::Table => cli::admin::topic_list_table(&topics),
                    Output::Json => cli::print_json(&topics),
                }
            }
            TopicCommand::Describe {
                names,
                bootstrap,
                output,
            } => {
                let topics = AdminClient::connect(&bootstrap.bootstrap)
                    .await?
                    .describe(&names)
                    .await?;
                match output.output {
                    Output::Table => cli::admin::topic_describe_table(&topics),
                    Output::Json => cli::print_json(&topics),
                }
            }
            TopicCommand::Alter {
                name,
                partitions,
                set,
                delete,
                validate_only,
                bootstrap,
                output,
            } => {
                AdminClient::connect(&bootstrap.bootstrap)
                    .await?
                    .alter_topic(&name, partitions, &set, &delete, validate_only)
                    .await?;
                let verb = if validate_only {
                    "would alter"
                } else {
                    "altered"
                };
                match output.output {
                    Output::Table => println!("{verb} topic {name}"),
                    Output::Json => cli::print_json(&serde_json::json!({
                        "altered": name,
                        "validate_only": validate_only,
                        "partitions": partitions,
                        "set": set.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                        "deleted": delete,
                    })),
                }
            }
            TopicCommand::Delete {
                name,
                bootstrap,
                output,
            } => {
                AdminClient::connect(&bootstrap.bootstrap)
                    .await?
                    .delete_topic(&name)
                    .await?;
                match output.output {
                    Output::Table => println!("deleted topic {name}"),
                    Output::Json => cli::print_json(&serde_json::json!({ "deleted": name })),
                }
            }
        }
        Ok::<(), strata_broker::kafka::client::ClientError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("strata: error: {err}");
            ExitCode::from(1)
        }
    }
}

/// `strata mqtt hash-password`: the password comes from stdin (never argv), the hash goes to
/// stdout. Exit 2 for an empty or unreadable password.
fn mqtt_hash_password() -> ExitCode {
    use std::io::BufRead;
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("strata: error: cannot read the password from stdin: {e}");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("strata: error: the password is empty (give it on the first line of stdin)");
        return ExitCode::from(2);
    }
    match strata_broker::mqtt::auth::hash_password(password.as_bytes()) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strata: error: hashing failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn user(cmd: UserCommand) -> ExitCode {
    match cmd {
        UserCommand::Add {
            args,
            bootstrap,
            output,
        } => run_cli(cli::user::add(args, &bootstrap.bootstrap, output.output)),
        UserCommand::Delete {
            name,
            mechanism,
            bootstrap,
            output,
        } => run_cli(async move {
            cli::user::delete(&name, mechanism, &bootstrap.bootstrap, output.output).await
        }),
        UserCommand::List { bootstrap, output } => {
            run_cli(cli::user::list(&bootstrap.bootstrap, output.output))
        }
    }
}

/// Runs an async CLI command on a current-thread runtime and maps its error to an exit code
/// (1: the node refused or is unreachable; 2: a bad argument).
fn run_cli<F: std::future::Future<Output = Result<(), cli::CliError>>>(work: F) -> ExitCode {
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => err.exit(),
    }
}

fn cluster(cmd: ClusterCommand) -> ExitCode {
    match cmd {
        ClusterCommand::Status { admin, output } => {
            run_cli(cli::admin::cluster_status(&admin.admin, output.output))
        }
        ClusterCommand::Meta(args) => run_cli(cli::meta_voters::run(args)),
        ClusterCommand::Drain {
            node,
            undo,
            wait,
            timeout_secs,
            admin,
            output,
        } => run_cli(async move {
            let wait = wait.then(|| std::time::Duration::from_secs(timeout_secs));
            cli::admin::cluster_drain(&admin.admin, node, undo, wait, output.output).await
        }),
    }
}

fn group(cmd: GroupCommand) -> ExitCode {
    use cli::admin::ResetTarget;
    match cmd {
        GroupCommand::List { admin, output } => {
            run_cli(cli::admin::group_list(&admin.admin, output.output))
        }
        GroupCommand::Describe {
            group,
            admin,
            output,
        } => {
            run_cli(
                async move { cli::admin::group_describe(&admin.admin, &group, output.output).await },
            )
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            partitions,
            to_earliest,
            to_latest,
            to_offset,
            to_datetime,
            dry_run,
            admin,
            output,
        } => {
            // clap's "target" group guarantees exactly one of them.
            let to = match (to_earliest, to_latest, to_offset, to_datetime) {
                (true, _, _, _) => ResetTarget::Earliest,
                (_, true, _, _) => ResetTarget::Latest,
                (_, _, Some(n), _) => ResetTarget::Offset(n as i64),
                (_, _, _, Some(ms)) => ResetTarget::Timestamp(ms),
                _ => ResetTarget::Latest,
            };
            run_cli(async move {
                cli::admin::group_reset(
                    &admin.admin,
                    &group,
                    &topic,
                    partitions,
                    to,
                    dry_run,
                    output.output,
                )
                .await
            })
        }
    }
}

fn produce(args: ProduceArgs) -> ExitCode {
    run_cli(async move {
        let n = cli::records::produce(
            &args.bootstrap.bootstrap,
            &args.topic,
            args.key_sep.as_deref(),
            args.partition,
        )
        .await?;
        eprintln!("produced {n} records to {}", args.topic);
        Ok(())
    })
}

fn consume(args: ConsumeArgs) -> ExitCode {
    use cli::records::Start;
    let start = match (args.from_beginning, args.offset) {
        (true, _) => Start::Beginning,
        (_, Some(n)) => Start::Offset(n as i64),
        _ => Start::End,
    };
    // `\t` and `\n` as typed on a shell line mean the control characters.
    let key_sep = args.key_sep.replace("\\t", "\t").replace("\\n", "\n");
    run_cli(async move {
        cli::records::consume(cli::records::ConsumeArgs {
            bootstrap: &args.bootstrap.bootstrap,
            topic: &args.topic,
            partition: args.partition,
            start,
            count: args.count,
            print_key: args.print_key,
            key_sep: &key_sep,
            timeout: args.timeout_ms.map(std::time::Duration::from_millis),
        })
        .await
        .map(|_| ())
    })
}

/// Runs `strata export parquet`. Exit 2 on bad arguments, 1 when the broker or store fails.
fn export_parquet(args: ExportParquetArgs) -> ExitCode {
    use strata_broker::export::{self, ExportRequest, FileLimits};
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let request = ExportRequest {
        topic: args.topic,
        from_ms: args.from_time,
        to_ms: args.to_time,
        store_url: args.to,
        bootstrap: args.bootstrap.bootstrap,
        partitions: args.partitions,
        limits: FileLimits::default(),
    };
    match runtime.block_on(export::run(request)) {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("strata: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
