//! `grpc.health.v1` for what can fail while the server keeps serving: ConfigService (plan,
//! apply, drift) needs the drift engine, so it is NOT_SERVING while the engine cannot answer
//! (and a metric says so); the other services are unaffected.

use std::sync::Arc;

use muster::pb::config_service_server::ConfigServiceServer;
use tonic_health::server::HealthReporter;

use crate::drift::{DriftEngine, EngineStatus};
use crate::metrics::Metrics;

/// Mirrors the engine's status into ConfigService's health and the metrics until the engine
/// stops.
pub async fn follow_drift_engine(
    engine: DriftEngine,
    health: HealthReporter,
    metrics: Arc<Metrics>,
) {
    let mut status = engine.status();
    loop {
        let current = status.borrow_and_update().clone();
        metrics.set_drift_engine(&current);
        match current {
            EngineStatus::Failed(_) => {
                health
                    .set_not_serving::<ConfigServiceServer<super::config::ConfigApi>>()
                    .await
            }
            // Questions wait for the load; a stop is the server's own shutdown.
            EngineStatus::Loading | EngineStatus::Running | EngineStatus::Stopped => {
                health
                    .set_serving::<ConfigServiceServer<super::config::ConfigApi>>()
                    .await
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
    use tonic_health::server::HealthService;

    use super::*;
    use crate::drift::{DriftEngine, mailbox};
    use crate::inventory::Inventory;
    use crate::model::ApiError;
    use crate::model::secrets::SecretBox;
    use crate::store::*;

    /// A real sled store whose listings fail when `fail_lists` is set: a disk error while the
    /// engine loads, which no public interface can cause on demand.
    struct ListFails {
        inner: SledStore,
        fail_lists: bool,
    }

    impl Store for ListFails {
        fn commit(&self, m: Mutation) -> Pending {
            self.inner.commit(m)
        }
        fn durable(&self) -> tokio::sync::watch::Receiver<Result<u64, String>> {
            self.inner.durable()
        }
        fn commit_aux(&self, w: AuxWrite) -> PendingAux {
            self.inner.commit_aux(w)
        }
        fn durable_batches(&self) -> tokio::sync::watch::Receiver<Result<u64, String>> {
            self.inner.durable_batches()
        }
        fn batches(&self) -> u64 {
            self.inner.batches()
        }
        fn aux_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.aux_get(key)
        }
        fn aux_scan(&self, prefix: &[u8]) -> Result<Vec<AuxRecord>, StoreError> {
            self.inner.aux_scan(prefix)
        }
        fn revision(&self) -> u64 {
            self.inner.revision()
        }
        fn get(&self, kind: KindId, name: &str) -> Result<Option<StoredObject>, StoreError> {
            self.inner.get(kind, name)
        }
        fn id_of(&self, kind: KindId, name: &str) -> Option<String> {
            self.inner.id_of(kind, name)
        }
        fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
            if self.fail_lists {
                return Err(StoreError::Io("injected read error".into()));
            }
            self.inner.list(q)
        }
        fn counts(&self) -> Result<BTreeMap<KindId, u64>, StoreError> {
            self.inner.counts()
        }
        fn changes(
            &self,
            after: u64,
            upto: u64,
            limit: usize,
        ) -> Result<Vec<ChangeEntry>, StoreError> {
            self.inner.changes(after, upto, limit)
        }
        fn audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
            self.inner.audit(q)
        }
        fn commit_set(&self, ms: Vec<Mutation>) -> PendingSet {
            self.inner.commit_set(ms)
        }
        fn commit_set_with(
            &self,
            ms: Vec<Mutation>,
            aux: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        ) -> PendingSet {
            self.inner.commit_set_with(ms, aux)
        }
        fn verify_chain(&self, from: Option<ChainAnchor>) -> Result<ChainReport, StoreError> {
            self.inner.verify_chain(from)
        }
        fn record_refusal(&self, r: Refusal) -> Result<(), StoreError> {
            self.inner.record_refusal(r)
        }
        fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
            self.inner.tokens()
        }
        fn commit_tokens(&self, w: crate::store::TokenWrite) -> crate::store::PendingAux {
            self.inner.commit_tokens(w)
        }
        fn backup(
            &self,
            attachment: &[u8],
            out: &mut dyn std::io::Write,
        ) -> Result<u64, StoreError> {
            self.inner.backup(attachment, out)
        }
        fn flush_stats(&self) -> FlushStats {
            self.inner.flush_stats()
        }
    }

    async fn config_status(health: &HealthService) -> ServingStatus {
        let name = <ConfigServiceServer<crate::grpc::config::ConfigApi> as tonic::server::NamedService>::NAME;
        let r: HealthCheckResponse = health
            .check(tonic::Request::new(HealthCheckRequest {
                service: name.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(r.status).unwrap()
    }

    /// Starts an engine over a store whose listings fail or not, with the health follower;
    /// returns once ConfigService's health reads `want` (bounded wait).
    async fn engine_health(
        fail_lists: bool,
        want: ServingStatus,
    ) -> (DriftEngine, Arc<Metrics>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let inner = SledStore::open(&dir.path().join("data"), &StoreOptions::default()).unwrap();
        let store: Arc<dyn Store> = Arc::new(ListFails { inner, fail_lists });
        let (notifier, mailbox) = mailbox();
        let inventory = Arc::new(Inventory::new(
            Arc::clone(&store),
            SecretBox::from_key(rand::random()),
            muster::clock::system(),
            notifier,
        ));
        let engine = DriftEngine::start(inventory, mailbox);
        let metrics = Arc::new(Metrics::new(store));
        let (reporter, _server) = tonic_health::server::health_reporter();
        // Serving first, as Server::run starts every service.
        reporter
            .set_serving::<ConfigServiceServer<crate::grpc::config::ConfigApi>>()
            .await;
        let health = HealthService::from_health_reporter(reporter.clone());
        tokio::spawn(follow_drift_engine(
            engine.clone(),
            reporter,
            Arc::clone(&metrics),
        ));
        let mut status = engine.status();
        tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|s| !matches!(s, crate::drift::EngineStatus::Loading)),
        )
        .await
        .expect("engine left Loading")
        .unwrap();
        for _ in 0..500 {
            if config_status(&health).await == want {
                return (engine, metrics, dir);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("ConfigService health never became {want:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_engine_that_cannot_load_makes_config_service_not_serving() {
        let (engine, metrics, _dir) = engine_health(true, ServingStatus::NotServing).await;
        let text = metrics.render();
        assert!(text.contains("muster_drift_engine_failed 1"), "{text}");
        assert!(text.contains("muster_drift_engine_ready 0"), "{text}");
        // Questions are refused at once with a reason, not left to time out.
        assert!(!engine.caught_up(Duration::from_secs(30)).await);
        let e = engine
            .drift(muster::selector::Selector::default(), String::new(), true)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ApiError::Unavailable(m) if m.contains("cannot load")),
            "{e:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loaded_engine_keeps_config_service_serving() {
        let (engine, metrics, _dir) = engine_health(false, ServingStatus::Serving).await;
        let text = metrics.render();
        assert!(text.contains("muster_drift_engine_ready 1"), "{text}");
        assert!(text.contains("muster_drift_engine_failed 0"), "{text}");
        assert!(engine.caught_up(Duration::from_secs(30)).await);
    }
}
