//! DNS messages on the wire (RFC 1035 §4.1), as much as a server of A records needs.
//!
//! A query is a 12-byte header and one question; whatever follows the question (an EDNS OPT
//! record in the additional section, say) is ignored, and the answer carries no OPT, which
//! tells the client this server does not speak EDNS:
//!
//! ```text
//!   header    id:16 | QR:1 opcode:4 AA:1 TC:1 RD:1 | RA:1 Z:3 RCODE:4
//!             qdcount:16 ancount:16 nscount:16 arcount:16
//!   question  name (labels: length byte 1..=63, then the bytes; a zero byte ends it)
//!             qtype:16 qclass:16
//!   answer    name (a pointer to the question's name: 0xC00C), type:16 class:16 ttl:32
//!             rdlength:16 rdata (4 bytes of IPv4 for A)
//! ```
//!
//! The parser is total: any input gives a [`Query`] or a [`ParseError`], never a panic (a
//! property test feeds it random bytes). Compression pointers are refused in a question (no
//! resolver sends one there) and so are labels with bytes outside letters, digits, `-` and
//! `_`, so a name can be matched as a plain lowercase string.

use std::net::Ipv4Addr;

/// Record type A (an IPv4 address).
pub const TYPE_A: u16 = 1;
/// Record type AAAA (an IPv6 address).
pub const TYPE_AAAA: u16 = 28;
/// Class IN (the Internet).
pub const CLASS_IN: u16 = 1;
/// The largest answer sent over UDP without EDNS; longer ones are truncated (TC set).
pub const MAX_UDP_MESSAGE: usize = 512;

const HEADER_LEN: usize = 12;
const MAX_NAME_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const OPCODE_MASK: u16 = 0x7800;
/// An answer record's fixed size: name pointer, type, class, ttl, rdlength and 4 bytes of data.
const A_RECORD_LEN: usize = 2 + 2 + 2 + 4 + 2 + 4;

/// Response codes this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
}

/// Why a message is not a query this server can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message of {0} bytes is shorter than a DNS header")]
    TooShort(usize),
    #[error("message is a response, not a query")]
    NotAQuery,
    #[error("unsupported opcode {0}")]
    UnsupportedOpcode(u16),
    #[error("query has {0} questions, not one")]
    QuestionCount(u16),
    #[error("question ends before its name, type or class does")]
    Truncated,
    #[error("label length byte {0:#04x} is not a plain label (compression or reserved)")]
    BadLabelLength(u8),
    #[error("name is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("label holds a byte outside letters, digits, '-' and '_'")]
    BadLabelByte,
}

impl ParseError {
    /// The code to answer with, or `None` when the message deserves no answer at all (too short
    /// to carry an id, or itself a response: answering responses invites loops).
    pub fn rcode(&self) -> Option<Rcode> {
        match self {
            Self::TooShort(_) | Self::NotAQuery => None,
            Self::UnsupportedOpcode(_) => Some(Rcode::NotImp),
            _ => Some(Rcode::FormErr),
        }
    }
}

/// A parsed query: its id and flags, and its one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The request's flags word, kept for RD (echoed in the answer).
    pub flags: u16,
    /// The name, lowercase, labels joined by dots, no trailing dot (`""` for the root).
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question exactly as received (name, type, class), echoed in the answer.
    question: Vec<u8>,
}

/// What to answer a question with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR with these A records (possibly truncated to fit [`MAX_UDP_MESSAGE`]).
    Addresses(Vec<Ipv4Addr>),
    /// NOERROR without records: the name exists, but not with the type asked for.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// The server cannot answer yet (no view of the API so far); clients retry.
    ServFail,
}

/// The id of a message, when it is long enough to have one (to answer an unparsable query).
pub fn message_id(message: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*message.first()?, *message.get(1)?]))
}

/// Parses a query message.
pub fn parse_query(message: &[u8]) -> Result<Query, ParseError> {
    if message.len() < HEADER_LEN {
        return Err(ParseError::TooShort(message.len()));
    }
    let word = |at: usize| u16::from_be_bytes([message[at], message[at + 1]]);
    let id = word(0);
    let flags = word(2);
    if flags & FLAG_QR != 0 {
        return Err(ParseError::NotAQuery);
    }
    let opcode = (flags & OPCODE_MASK) >> 11;
    if opcode != 0 {
        return Err(ParseError::UnsupportedOpcode(opcode));
    }
    let qdcount = word(4);
    if qdcount != 1 {
        return Err(ParseError::QuestionCount(qdcount));
    }

    let mut at = HEADER_LEN;
    let mut name = String::new();
    let mut wire_len = 0usize;
    loop {
        let len = *message.get(at).ok_or(ParseError::Truncated)?;
        at += 1;
        wire_len += 1;
        if len == 0 {
            break;
        }
        if usize::from(len) > MAX_LABEL_LEN {
            return Err(ParseError::BadLabelLength(len));
        }
        let label = message
            .get(at..at + usize::from(len))
            .ok_or(ParseError::Truncated)?;
        wire_len += label.len();
        if wire_len > MAX_NAME_LEN {
            return Err(ParseError::NameTooLong);
        }
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return Err(ParseError::BadLabelByte);
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        at += label.len();
    }
    let fixed = message.get(at..at + 4).ok_or(ParseError::Truncated)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    Ok(Query {
        id,
        flags,
        name,
        qtype,
        qclass,
        question: message[HEADER_LEN..at + 4].to_vec(),
    })
}

/// The answer to `query`, at most [`MAX_UDP_MESSAGE`] bytes.
pub fn encode_answer(query: &Query, answer: &Answer, ttl: u32) -> Vec<u8> {
    let (rcode, addresses): (Rcode, &[Ipv4Addr]) = match answer {
        Answer::Addresses(addresses) => (Rcode::NoError, addresses),
        Answer::NoData => (Rcode::NoError, &[]),
        Answer::NxDomain => (Rcode::NxDomain, &[]),
        Answer::ServFail => (Rcode::ServFail, &[]),
    };
    let room = MAX_UDP_MESSAGE.saturating_sub(HEADER_LEN + query.question.len()) / A_RECORD_LEN;
    let count = addresses.len().min(room);
    let mut flags = FLAG_QR | FLAG_AA | (query.flags & FLAG_RD) | rcode as u16;
    if count < addresses.len() {
        flags |= FLAG_TC;
    }
    // `count` fits: at most 512 / 16 records.
    let mut out = header(query.id, flags, 1, count as u16);
    out.extend_from_slice(&query.question);
    for address in &addresses[..count] {
        out.extend_from_slice(&[0xC0, HEADER_LEN as u8]); // the question's name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&address.octets());
    }
    out
}

/// A header-only answer (no question echoed) for a query that could not be parsed.
pub fn encode_error(id: u16, rcode: Rcode) -> Vec<u8> {
    header(id, FLAG_QR | rcode as u16, 0, 0)
}

/// A query for `name` (dots between labels, an optional trailing dot), for clients and tests.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = header(id, FLAG_RD, 1, 0);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len().min(MAX_LABEL_LEN) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(MAX_LABEL_LEN)]);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The parts of an answer a client checks: its id, rcode, whether it was truncated, and the A
/// records' addresses. For tests and the harness; assumes answers shaped as this server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAnswer {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    pub addresses: Vec<Ipv4Addr>,
}

/// Reads an answer written by [`encode_answer`] or [`encode_error`] (one question, A records
/// named by a pointer).
pub fn parse_answer(message: &[u8]) -> Option<ParsedAnswer> {
    let word = |at: usize| {
        Some(u16::from_be_bytes([
            *message.get(at)?,
            *message.get(at + 1)?,
        ]))
    };
    let flags = word(2)?;
    let (qdcount, ancount) = (word(4)?, word(6)?);
    let mut at = HEADER_LEN;
    for _ in 0..qdcount {
        loop {
            let len = *message.get(at)?;
            at += 1;
            match len {
                0 => break,
                l if l & 0xC0 == 0xC0 => {
                    at += 1;
                    break;
                }
                l => at += usize::from(l),
            }
        }
        at += 4;
    }
    let mut addresses = Vec::new();
    for _ in 0..ancount {
        let rr = message.get(at..at + A_RECORD_LEN)?;
        if u16::from_be_bytes([rr[2], rr[3]]) == TYPE_A {
            addresses.push(Ipv4Addr::new(rr[12], rr[13], rr[14], rr[15]));
        }
        at += A_RECORD_LEN;
    }
    Some(ParsedAnswer {
        id: word(0)?,
        rcode: (flags & 0x000F) as u8,
        truncated: flags & FLAG_TC != 0,
        addresses,
    })
}

fn header(id: u16, flags: u16, qdcount: u16, ancount: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_UDP_MESSAGE);
    for word in [id, flags, qdcount, ancount, 0, 0] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_query_and_answers_it() {
        let query = parse_query(&encode_query(7, "Ferry.West.svc.cluster.local.", TYPE_A)).unwrap();
        assert_eq!(query.id, 7);
        assert_eq!(query.name, "ferry.west.svc.cluster.local");
        assert_eq!((query.qtype, query.qclass), (TYPE_A, CLASS_IN));

        let addresses = vec![Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 1, 2, 4)];
        let wire = encode_answer(&query, &Answer::Addresses(addresses.clone()), 5);
        let parsed = parse_answer(&wire).unwrap();
        assert_eq!(parsed.id, 7);
        assert_eq!(parsed.rcode, Rcode::NoError as u8);
        assert!(!parsed.truncated);
        assert_eq!(parsed.addresses, addresses);
        // RD echoed, AA and QR set.
        assert_eq!(u16::from_be_bytes([wire[2], wire[3]]) & 0x8500, 0x8500);
    }

    #[test]
    fn nxdomain_and_nodata_carry_no_records() {
        let query = parse_query(&encode_query(1, "nope.cluster.local", TYPE_AAAA)).unwrap();
        let nx = parse_answer(&encode_answer(&query, &Answer::NxDomain, 5)).unwrap();
        assert_eq!((nx.rcode, nx.addresses.len()), (Rcode::NxDomain as u8, 0));
        let empty = parse_answer(&encode_answer(&query, &Answer::NoData, 5)).unwrap();
        assert_eq!(
            (empty.rcode, empty.addresses.len()),
            (Rcode::NoError as u8, 0)
        );
    }

    #[test]
    fn long_answers_are_truncated_to_512_bytes() {
        let query = parse_query(&encode_query(1, "many.ns.svc.cluster.local", TYPE_A)).unwrap();
        let addresses: Vec<_> = (0..100).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        let wire = encode_answer(&query, &Answer::Addresses(addresses), 5);
        assert!(wire.len() <= MAX_UDP_MESSAGE);
        let parsed = parse_answer(&wire).unwrap();
        assert!(parsed.truncated);
        assert!(!parsed.addresses.is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        assert_eq!(parse_query(&[0; 5]), Err(ParseError::TooShort(5)));
        let mut response = encode_query(1, "a.b", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(ParseError::NotAQuery));
        let mut notify = encode_query(1, "a.b", TYPE_A);
        notify[2] |= 4 << 3;
        assert_eq!(parse_query(&notify), Err(ParseError::UnsupportedOpcode(4)));
        let mut compressed = encode_query(1, "a.b", TYPE_A);
        compressed[12] = 0xC0;
        assert_eq!(
            parse_query(&compressed),
            Err(ParseError::BadLabelLength(0xC0))
        );
        let dotted = [&header(1, 0, 1, 0)[..], b"\x03a.b\x00\x00\x01\x00\x01"].concat();
        assert_eq!(parse_query(&dotted), Err(ParseError::BadLabelByte));
        let cut = encode_query(1, "abc.def", TYPE_A);
        assert_eq!(
            parse_query(&cut[..cut.len() - 1]),
            Err(ParseError::Truncated)
        );
        assert_eq!(ParseError::Truncated.rcode(), Some(Rcode::FormErr));
        assert_eq!(ParseError::NotAQuery.rcode(), None);
    }

    #[test]
    fn names_longer_than_255_bytes_are_refused() {
        let name = vec!["a".repeat(63); 5].join(".");
        assert_eq!(
            parse_query(&encode_query(1, &name, TYPE_A)),
            Err(ParseError::NameTooLong)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_give_an_error_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            if let Ok(query) = parse_query(&bytes) {
                // Whatever parses can be answered within the UDP limit.
                let answer = Answer::Addresses(vec![Ipv4Addr::LOCALHOST; 40]);
                prop_assert!(encode_answer(&query, &answer, 5).len() <= MAX_UDP_MESSAGE);
            }
            let _ = parse_answer(&bytes);
        }

        #[test]
        fn random_headers_on_a_valid_question_never_panic(
            header in proptest::array::uniform12(any::<u8>()),
            name in "[a-z0-9-]{1,20}(\\.[a-z0-9_-]{1,20}){0,5}",
        ) {
            let mut message = encode_query(0, &name, TYPE_A);
            message[..12].copy_from_slice(&header);
            let _ = parse_query(&message);
        }

        #[test]
        fn valid_names_round_trip(
            id in any::<u16>(),
            name in "[a-zA-Z0-9-]{1,63}(\\.[a-zA-Z0-9_-]{1,30}){0,5}",
        ) {
            let query = parse_query(&encode_query(id, &name, TYPE_A)).unwrap();
            prop_assert_eq!(query.id, id);
            prop_assert_eq!(query.name, name.to_ascii_lowercase());
        }
    }
}
