//! `strata meta restore`: rebuild a node's metadata store from the backups in object storage
//! (see `strata_broker::meta_backup` for what is uploaded and `docs/operations.md`, "Disaster
//! recovery", for the procedure).
//!
//! Exit codes: 0 restored; 1 the store cannot be read or holds no usable snapshot; 2 a bad
//! argument, or a metadata store already exists where the restore would write (without
//! `--force`).

use super::{CliError, Output};
use std::path::{Path, PathBuf};
use strata_broker::meta_backup::{read_backup, ReadBackupError};
use strata_meta::backup::{create_store, prepare_for_restore, summarize};
use strata_meta::MetaError;
use strata_tiering::ObjectStore;

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The object store holding the backups: the URL the cluster ran with (`--object-store`),
    /// e.g. fs:///var/lib/strata/objects or s3://bucket/prefix?endpoint=http://host:9000.
    #[arg(long = "from", value_name = "URL")]
    pub from: String,
    /// The data dir of the node that will run the restored metadata (its metadata goes to
    /// <data-dir>/meta unless --meta-dir).
    #[arg(long, default_value = "./strata-data")]
    pub data_dir: PathBuf,
    /// Where the metadata store is written (the node's `meta.dir`); default <data-dir>/meta.
    #[arg(long)]
    pub meta_dir: Option<PathBuf>,
    /// The node id the restored node will start with (`--node-id`): the only meta voter.
    #[arg(long, default_value_t = 1)]
    pub node_id: u64,
    /// Replace an existing metadata store in the meta dir.
    #[arg(long)]
    pub force: bool,
}

/// Runs the restore; prints what was restored.
pub async fn restore(args: RestoreArgs, output: Output) -> Result<(), CliError> {
    if args.node_id == 0 {
        return Err(CliError::Usage("--node-id must be positive".into()));
    }
    let meta_dir = args
        .meta_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("meta"));
    let db_path = meta_dir.join(strata_meta::store::DB_FILE_NAME);
    // Refuse before any network work: the cheap mistake first.
    if db_path.exists() && !args.force {
        return Err(CliError::Usage(format!(
            "a metadata store already exists at {}; refusing to overwrite it \
             (stop the node and pass --force to replace it, or restore into an empty --data-dir)",
            db_path.display()
        )));
    }
    let store = ObjectStore::from_url(&args.from).map_err(|e| CliError::Usage(e.to_string()))?;
    eprintln!("strata: reading metadata backups from {}", store.url());
    let restored = read_backup(&store).await.map_err(|e| match e {
        ReadBackupError::NoSnapshot { .. } | ReadBackupError::NoUsableSnapshot { .. } => {
            CliError::Remote(e.to_string())
        }
        ReadBackupError::Store(_) => CliError::Remote(e.to_string()),
    })?;
    for skipped in &restored.skipped_snapshots {
        eprintln!("strata: warning: skipped an unusable snapshot: {skipped}");
    }
    if let Some(why) = &restored.stopped {
        eprintln!("strata: warning: the metadata log stops early: {why}");
    }
    let mut state = restored.state;
    let prepared = prepare_for_restore(&mut state);
    if args.force && db_path.exists() {
        remove_store(&db_path)?;
    }
    let node_id = args.node_id;
    let dir = meta_dir.clone();
    let written_state = state.clone();
    let path = tokio::task::spawn_blocking(move || create_store(&dir, node_id, &written_state))
        .await
        .map_err(|e| CliError::Remote(format!("the restore task failed: {e}")))?
        .map_err(|e| match e {
            MetaError::StoreExists { .. } => CliError::Usage(e.to_string()),
            other => CliError::Remote(format!(
                "cannot write the metadata store in {}: {other}",
                meta_dir.display()
            )),
        })?;
    let summary = summarize(&state);
    match output {
        Output::Json => super::print_json(&serde_json::json!({
            "store": path.display().to_string(),
            "node_id": node_id,
            "snapshot": restored.snapshot_key,
            "snapshot_index": restored.snapshot_index,
            "log_entries_applied": restored.entries_applied,
            "log_batches_read": restored.batches_read,
            "last_index": summary.last_applied,
            "stopped_early": restored.stopped,
            "topics": summary.topics,
            "partitions": summary.partitions,
            "objects": summary.objects,
            "index_blocks": summary.blocks,
            "groups": summary.groups,
            "brokers": summary.brokers,
            "brokers_expired": prepared.brokers_expired,
            "streams_released": prepared.streams_released,
        })),
        Output::Table => {
            println!("restored metadata into {}", path.display());
            println!(
                "  snapshot          {} (index {})",
                restored.snapshot_key, restored.snapshot_index
            );
            println!(
                "  log entries       {} applied from {} batches, up to index {}",
                restored.entries_applied, restored.batches_read, summary.last_applied
            );
            println!("  topics            {}", summary.topics);
            println!("  partitions        {}", summary.partitions);
            println!(
                "  objects           {} ({} index blocks)",
                summary.objects, summary.blocks
            );
            println!("  consumer groups   {}", summary.groups);
            println!(
                "  brokers expired   {:?} (their partitions go to the brokers that register)",
                prepared.brokers_expired
            );
            println!(
                "next: start node {node_id} with --data-dir {} and --object-store {} \
                 (single-node metadata); grow the meta group from there",
                args.data_dir.display(),
                store.url()
            );
        }
    }
    Ok(())
}

fn remove_store(path: &Path) -> Result<(), CliError> {
    eprintln!(
        "strata: --force: replacing the metadata store at {}",
        path.display()
    );
    std::fs::remove_file(path)
        .map_err(|e| CliError::Remote(format!("cannot remove {}: {e}", path.display())))
}
