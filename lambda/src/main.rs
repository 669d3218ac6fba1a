//! `bootstrap`: the StrataMQ Lambda function (`provided.al2023`, see `lambda/src/lib.rs`).
//!
//! Configuration comes from the environment (`docs/lambda.md`). A configuration the function
//! cannot start with is reported to the Runtime API as an init error (so the invocation fails
//! with that message instead of a timeout) and the process exits.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;
use std::sync::Arc;
use strata_lambda::{App, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let app = match Config::from_lookup(|k| std::env::var(k).ok()).and_then(App::new) {
        Ok(app) => Arc::new(app),
        Err(err) => {
            let message = format!("invalid configuration: {err}");
            tracing::error!("{message}");
            if let Err(e) = report_init_error(&message).await {
                tracing::error!(%e, "could not report the init error to the Runtime API");
            }
            std::process::exit(1);
        }
    };
    tracing::info!(
        node_id = app.config.node_id,
        from_env = app.config.node_id_from_env,
        meta = ?app.config.meta_addrs,
        "strata lambda starting"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let app = app.clone();
        async move {
            let deadline_ms = event.context.deadline;
            app.handle(event.payload, deadline_ms)
                .await
                .map_err(Error::from)
        }
    }))
    .await
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("STRATA_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.without_time().init();
    }
}

/// `POST /2018-06-01/runtime/init/error` on the Runtime API (`AWS_LAMBDA_RUNTIME_API`).
/// lambda_runtime reports init errors of its own hooks only, so this is a plain HTTP/1.1
/// request.
async fn report_init_error(message: &str) -> Result<(), String> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|_| "AWS_LAMBDA_RUNTIME_API is not set".to_owned())?;
    let body = serde_json::json!({
        "errorMessage": message,
        "errorType": "Runtime.ConfigError",
    })
    .to_string();
    let request = format!(
        "POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: {api}\r\n\
         Lambda-Runtime-Function-Error-Type: Runtime.ConfigError\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(&api)
        .await
        .map_err(|e| format!("connect {api}: {e}"))?;
    conn.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if status_line.contains(" 202") || status_line.contains(" 200") {
        Ok(())
    } else {
        Err(format!("Runtime API answered `{status_line}`"))
    }
}
