//! One leg of a session (client side or upstream side): a byte stream that
//! starts plain or TLS and can be upgraded to TLS in place (STARTTLS).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsStream;

/// A plain or TLS stream over the transport `T` (a `TcpStream`, or an
/// in-memory duplex in tests).
pub enum Leg<T> {
    Plain(T),
    Tls(Box<TlsStream<T>>),
    /// Only during an upgrade, or after a failed one.
    Gone,
}

/// What a finished handshake negotiated, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: &'static str,
    pub sni: Option<String>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Leg<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Leg::Tls(_))
    }

    /// TLS as server (client leg: STARTTLS or implicit TLS).
    pub async fn accept_tls(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<TlsInfo> {
        let plain = self.take_plain()?;
        let stream = tokio_rustls::TlsAcceptor::from(config)
            .accept(plain)
            .await?;
        let (_, conn) = stream.get_ref();
        let info = TlsInfo {
            version: conn
                .protocol_version()
                .map_or("?", crate::tls::version_name),
            sni: conn.server_name().map(str::to_owned),
        };
        *self = Leg::Tls(Box::new(TlsStream::Server(stream)));
        Ok(info)
    }

    /// TLS as client (upstream leg: STARTTLS or implicit TLS).
    pub async fn connect_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<TlsInfo> {
        let plain = self.take_plain()?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, plain)
            .await?;
        let (_, conn) = stream.get_ref();
        let info = TlsInfo {
            version: conn
                .protocol_version()
                .map_or("?", crate::tls::version_name),
            sni: None,
        };
        *self = Leg::Tls(Box::new(TlsStream::Client(stream)));
        Ok(info)
    }

    fn take_plain(&mut self) -> io::Result<T> {
        match std::mem::replace(self, Leg::Gone) {
            Leg::Plain(t) => Ok(t),
            other => {
                *self = other;
                Err(io::Error::other("TLS is already active on this leg"))
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "leg closed after a failed TLS upgrade",
    )
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Leg<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Leg::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Leg::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Leg<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Leg::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Leg::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Leg::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Plain(t) => Pin::new(t).poll_flush(cx),
            Leg::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Leg::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Leg::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Leg::Gone => Poll::Ready(Ok(())),
        }
    }
}
