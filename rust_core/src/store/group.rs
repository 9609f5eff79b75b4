//! Group nodes of a store and the root group's attributes (format version,
//! provenance, and the committed row counts, which are the commit point).

use std::sync::Arc;

use zarrs::group::{Group, GroupBuilder};
use zarrs::storage::{ReadableStorageTraits, StoreKey};

use super::durable::DurableStore;
use crate::error::{CoreError, CoreResult};

/// Writes (atomically) a group node at `path` (`/`, `/acts`, ...) with `attrs` (a JSON object).
pub fn write_group(store: &Arc<DurableStore>, path: &str, attrs_json: &str) -> CoreResult<()> {
    let attrs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(attrs_json)
        .map_err(|e| {
            CoreError::input(format!(
                "group attributes for {path} are not a JSON object: {e}"
            ))
        })?;
    let group = GroupBuilder::new()
        .attributes(attrs)
        .build(store.clone(), path)
        .map_err(|e| CoreError::store(format!("group {path}: {e}")))?;
    group
        .store_metadata()
        .map_err(|e| CoreError::store(format!("writing group {path}: {e}")))
}

/// Whether a zarr node (group or array) exists at `path`.
pub fn node_exists(store: &Arc<DurableStore>, path: &str) -> CoreResult<bool> {
    let trimmed = path.trim_matches('/');
    let key = if trimmed.is_empty() {
        "zarr.json".to_string()
    } else {
        format!("{trimmed}/zarr.json")
    };
    let key = StoreKey::new(key).map_err(|e| CoreError::input(format!("node {path}: {e}")))?;
    Ok(store
        .size_key(&key)
        .map_err(|e| CoreError::store(format!("node {path}: {e}")))?
        .is_some())
}

/// The attributes (a JSON object, as text) of the group at `path`.
pub fn read_group_attrs(store: &Arc<DurableStore>, path: &str) -> CoreResult<String> {
    let root = store.root().display().to_string();
    if !node_exists(store, path)? {
        return Err(CoreError::store(format!(
            "{root} is not a vlmfast store: no zarr group at {path}"
        )));
    }
    let group = Group::open(store.clone(), path)
        .map_err(|e| CoreError::store(format!("{root}: group {path}: {e}")))?;
    serde_json::to_string(group.attributes())
        .map_err(|e| CoreError::Internal(format!("serialising attributes: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::durable::tests::tempdir;
    use super::*;

    #[test]
    fn attrs_round_trip() {
        let dir = tempdir();
        let store = Arc::new(DurableStore::new(&dir).unwrap());
        assert!(read_group_attrs(&store, "/").is_err());
        write_group(&store, "/", r#"{"format_version": 1, "rows": {"a": 3}}"#).unwrap();
        write_group(&store, "/acts", "{}").unwrap();
        assert!(node_exists(&store, "/acts").unwrap());
        let back: serde_json::Value =
            serde_json::from_str(&read_group_attrs(&store, "/").unwrap()).unwrap();
        assert_eq!(back["rows"]["a"], 3);
        assert!(write_group(&store, "/", "[1]").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
