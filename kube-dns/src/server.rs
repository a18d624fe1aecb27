//! Answers DNS queries over UDP from the current [`NameTable`].
//!
//! One task, one socket: each datagram is parsed, looked up and answered before the next is
//! read, which is plenty for a test cluster. Until the first table arrives every query gets
//! SERVFAIL, which resolvers retry, rather than a wrong NXDOMAIN.

use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::codec::{self, Answer};
use crate::records::NameTable;

/// Serves queries on `socket` until it fails.
pub async fn serve(
    socket: UdpSocket,
    tables: watch::Receiver<Option<Arc<NameTable>>>,
    ttl: u32,
) -> std::io::Result<()> {
    // Queries are at most 512 bytes without EDNS; a larger buffer keeps EDNS queries whole.
    let mut buffer = vec![0u8; 4096];
    loop {
        let (len, peer) = socket.recv_from(&mut buffer).await?;
        let reply = answer(&buffer[..len], tables.borrow().as_deref(), ttl);
        if let Some(reply) = reply
            && let Err(error) = socket.send_to(&reply, peer).await
        {
            tracing::debug!(%error, %peer, "failed to send an answer");
        }
    }
}

/// The reply to one datagram, or `None` when it deserves none.
pub fn answer(message: &[u8], table: Option<&NameTable>, ttl: u32) -> Option<Vec<u8>> {
    match codec::parse_query(message) {
        Ok(query) => {
            let answer = match table {
                Some(table) => table.lookup(&query.name, query.qtype, query.qclass),
                None => Answer::ServFail,
            };
            tracing::debug!(name = %query.name, qtype = query.qtype, ?answer, "query");
            Some(codec::encode_answer(&query, &answer, ttl))
        }
        Err(error) => {
            tracing::debug!(%error, "unanswerable message");
            Some(codec::encode_error(
                codec::message_id(message)?,
                error.rcode()?,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{TYPE_A, encode_query, parse_answer};

    #[test]
    fn servfail_before_the_first_table_then_answers_from_it() {
        let query = encode_query(9, "kubernetes.default.svc.cluster.local", TYPE_A);
        let early = parse_answer(&answer(&query, None, 5).unwrap()).unwrap();
        assert_eq!(early.rcode, codec::Rcode::ServFail as u8);
        let table = NameTable::default();
        let late = parse_answer(&answer(&query, Some(&table), 5).unwrap()).unwrap();
        assert_eq!(late.rcode, codec::Rcode::NxDomain as u8);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        assert_eq!(answer(&[1, 2, 3], None, 5), None);
        let garbage = [0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xFF];
        let reply = parse_answer(&answer(&garbage, None, 5).unwrap()).unwrap();
        assert_eq!((reply.id, reply.rcode), (7, codec::Rcode::FormErr as u8));
    }
}
