//! The `/metrics` and `/healthz` port of the helper processes (`raftq agent`, `raftq
//! pg-relay`): Prometheus text from this process's recorder, with gauges refreshed when
//! scraped.

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::watch;

/// Installs the Prometheus recorder and serves it on `address` until `stopped` turns
/// true; `refresh` runs before each scrape (to read gauges that are not kept current).
pub async fn serve<F, Fut>(
    address: SocketAddr,
    mut stopped: watch::Receiver<bool>,
    refresh: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let listener = tokio::net::TcpListener::bind(address).await?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (prometheus, refresh) = (prometheus.clone(), refresh.clone());
                async move {
                    refresh().await;
                    prometheus.render()
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(%error, "metrics port failed");
        }
    });
    Ok(())
}
