//! A bound on clients that stop reading: a response write that makes no progress for the client timeout
//! fails, which ends the connection (and, mid-body, tells the client the transfer failed), so a client
//! that accepts no bytes cannot pin a response, its task handle and its buffers forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client socket whose writes fail once the client has accepted nothing for `stall`.
pub struct WriteStall {
    sock: TcpStream,
    stall: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteStall {
    pub fn new(sock: TcpStream, stall: Duration) -> WriteStall {
        WriteStall { sock, stall, stalled_since: None }
    }

    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let stall = self.stall;
        let timer = self.stalled_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteStall {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStall {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.sock).poll_write(cx, buf) {
            Poll::Pending => self.write_stalled(cx),
            done => {
                self.stalled_since = None;
                done
            }
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.sock).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.write_stalled(cx),
            done => {
                self.stalled_since = None;
                done
            }
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.sock.is_write_vectored()
    }
}
