//! What the driver writes: bytes gathered per leg during one turn of its
//! loop, written and flushed together.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{DriverEnv, bounded};
use crate::leg::Leg;
use crate::session::Action;

/// Bytes gathered for each leg during one turn of the driver's loop.
#[derive(Default)]
pub(crate) struct Outbox {
    client: Gathered,
    upstream: Gathered,
    /// Bytes gathered for each leg in the whole session.
    pub to_client: u64,
    pub to_upstream: u64,
}

/// What became of an [`Outbox::send`].
pub(crate) enum Sent {
    Ok,
    /// The client does not take its replies: the session ends.
    ClientGone,
    /// The upstream cannot be written to: the session hears of it as an EOF.
    UpstreamGone,
}

impl Outbox {
    /// Gathers an action's bytes for their leg; any other action is handed
    /// back.
    pub fn gather(&mut self, action: Action) -> Option<Action> {
        match action {
            Action::ToClient(bytes) => {
                self.to_client += bytes.len() as u64;
                self.client.push(bytes);
                None
            }
            Action::ToUpstream(bytes) => {
                self.to_upstream += bytes.len() as u64;
                self.upstream.push(bytes);
                None
            }
            other => Some(other),
        }
    }

    /// Writes and flushes what was gathered, client first.
    pub async fn send<C, U>(
        &mut self,
        client: &mut Leg<C>,
        upstream: &mut Leg<U>,
        env: &DriverEnv,
    ) -> Sent
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        if let Some(bytes) = self.client.take()
            && let Err(e) = bounded(write_flush(client, &bytes), env.write_timeout).await
        {
            tracing::info!(error = %e, "client not reading; closing");
            return Sent::ClientGone;
        }
        if let Some(bytes) = self.upstream.take()
            && let Err(e) = bounded(write_flush(upstream, &bytes), env.write_timeout).await
        {
            tracing::debug!(error = %e, "upstream write failed");
            return Sent::UpstreamGone;
        }
        Sent::Ok
    }
}

/// Byte strings for one leg, joined without a copy when there is only one
/// (the usual case), and holding no memory once taken.
#[derive(Default)]
struct Gathered(Option<Vec<u8>>);

impl Gathered {
    fn push(&mut self, bytes: Vec<u8>) {
        match &mut self.0 {
            None => self.0 = Some(bytes),
            Some(buf) => buf.extend_from_slice(&bytes),
        }
    }

    fn take(&mut self) -> Option<Vec<u8>> {
        self.0.take()
    }
}

async fn write_flush<T: AsyncWrite + Unpin>(leg: &mut T, bytes: &[u8]) -> std::io::Result<()> {
    leg.write_all(bytes).await?;
    leg.flush().await
}
