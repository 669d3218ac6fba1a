//! openraft's storage conformance suite against the redb store (STYLE.md §19).

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use strata_meta::store::{open_store, LogStore, StateMachineStore, DB_FILE_NAME};
use strata_meta::TypeConfig;
use tempfile::TempDir;

/// Builds a fresh store in its own temporary directory; the directory is the suite's guard
/// value, so it lives as long as the store under test.
struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (log, sm) = open_store(&dir.path().join(DB_FILE_NAME)).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_store_passes_openraft_suite() {
    // The suite starts its own tokio runtimes, so this is a plain test.
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}
