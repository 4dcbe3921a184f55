//! What a benchmark target must offer: queues, producers that send a batch and return once
//! it is durably acknowledged, and consumers that receive a batch and acknowledge it.
//! Every target implements these with its own client at its strongest durability.

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

pub type Result<T> = anyhow::Result<T>;

pub trait Driver: Send + Sync {
    /// Creates `queue` empty (deleting what an earlier run left under that name).
    fn create_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Removes `queue` after a scenario, so targets do not carry data between scenarios.
    fn delete_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>>;
    fn producer<'a>(
        &'a self,
        queue: &'a str,
        group: Option<String>,
    ) -> BoxFuture<'a, Result<Box<dyn Producer>>>;
    fn consumer<'a>(
        &'a self,
        queue: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>>;
}

pub trait Producer: Send {
    /// Sends `bodies` (one call when there is one, a batch otherwise) and returns once the
    /// target has acknowledged every one of them as stored.
    fn send(&mut self, bodies: Vec<Bytes>) -> BoxFuture<'_, Result<()>>;
}

pub trait Consumer: Send {
    /// Receives up to the consumer's batch size, waiting briefly when nothing is ready.
    fn receive(&mut self) -> BoxFuture<'_, Result<Vec<Bytes>>>;
    /// Acknowledges everything the last `receive` returned, or hands it to the next
    /// `receive` where the target acknowledges together with receiving (then `finish`
    /// acknowledges what is left).
    fn ack(&mut self) -> BoxFuture<'_, Result<()>>;
    /// Acknowledges whatever `ack` left for a next `receive`, once there is none;
    /// returns how many that was.
    fn finish(&mut self) -> BoxFuture<'_, Result<usize>> {
        async { Ok(0) }.boxed()
    }
}
