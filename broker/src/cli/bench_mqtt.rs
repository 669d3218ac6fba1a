//! `strata bench mqtt`: the flags of the MQTT load generator (`strata_broker::bench::mqtt`).
//!
//! Exit codes: 0 the run finished (its JSON report on stdout); 1 the broker refused, closed
//! or stalled; 2 a bad argument.

use super::CliError;
use std::net::SocketAddr;
use strata_broker::bench::mqtt::{self, MqttBench, MqttBenchError};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    /// One QoS 1 publisher → one QoS 1 subscriber, pipelined (window of PUBACKs).
    Qos1,
    /// One QoS 0 publisher → many QoS 0 subscribers of one topic.
    Fanout,
    /// One QoS 0 publisher → many QoS 0 subscribers, each of its own device topic (half through
    /// a `+` wildcard); each publish matches exactly one subscription.
    Routing,
    /// A fixed publish rate; publish → deliver percentiles.
    Latency,
    /// Many connections that CONNECT, SUBSCRIBE and sit (read the broker's RSS meanwhile).
    Idle,
}

#[derive(clap::Args, Debug)]
pub struct MqttArgs {
    /// The broker's MQTT listener, host:port (any MQTT 3.1.1 broker).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub addr: SocketAddr,
    #[arg(long, value_enum)]
    pub mode: ModeArg,
    /// Publishes (qos1, fanout, routing).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Payload bytes per publish (at least 8; 16 for latency).
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Unacknowledged QoS 1 publishes at most (qos1).
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Subscribers (fanout, routing).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Publishes per second (latency).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Length of a latency run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Samples sent in the first seconds of a latency run are not counted.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// QoS of a latency run's publishes and subscription (0 or 1).
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Connections (idle).
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connections set up at once (idle, and the subscribers of fanout and routing).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Keep alive told to the broker in CONNECT (seconds).
    #[arg(long, default_value_t = 600)]
    pub keep_alive_secs: u16,
    /// An idle run holds its connections until stdin closes or this many seconds pass.
    #[arg(long, default_value_t = 60)]
    pub hold_secs: u64,
    /// Give up when nothing arrives on a connection for this long (QoS 0 runs report what
    /// arrived; QoS 1 runs fail).
    #[arg(long, default_value_t = 5000)]
    pub stall_ms: u64,
    /// Topic prefix (each run appends a unique suffix).
    #[arg(long, default_value = "strata-bench")]
    pub topic: String,
}

/// Runs the generator; prints its report (and, in idle mode, first a `{"ready": …}` line).
pub async fn run(args: MqttArgs) -> Result<(), CliError> {
    let cfg = MqttBench {
        addr: args.addr,
        mode: match args.mode {
            ModeArg::Qos1 => mqtt::Mode::Qos1,
            ModeArg::Fanout => mqtt::Mode::Fanout,
            ModeArg::Routing => mqtt::Mode::Routing,
            ModeArg::Latency => mqtt::Mode::Latency,
            ModeArg::Idle => mqtt::Mode::Idle,
        },
        messages: args.messages,
        payload_bytes: args.payload_bytes,
        window: args.window,
        subscribers: args.subscribers,
        rate_per_s: args.rate,
        seconds: args.seconds,
        warmup_secs: args.warmup_secs,
        qos: args.qos,
        connections: args.connections,
        connect_concurrency: args.connect_concurrency,
        keep_alive_secs: args.keep_alive_secs,
        hold_secs: args.hold_secs,
        stall_ms: args.stall_ms,
        topic: args.topic,
    };
    let mut on_ready = |line: &serde_json::Value| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // The caller waits for this line: flush it now, not at exit.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    match mqtt::run(&cfg, &mut on_ready).await {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            Ok(())
        }
        Err(MqttBenchError::Usage(m)) => Err(CliError::Usage(m)),
        Err(e) => Err(CliError::Remote(e.to_string())),
    }
}
