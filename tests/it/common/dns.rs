//! A real, in-process authoritative DNS server for the federation tests:
//! UDP and TCP on the same port of 127.0.0.1, records added at run time.
//!
//! It answers every name it knows authoritatively: the records of the asked
//! name and type; NOERROR with an empty answer for a name that has records
//! of other types only; NXDOMAIN for a name without any record. Negative
//! answers carry no SOA unless [`TestDns::set_negative_ttl`] is called, so
//! by default resolvers keep no negative cache of their own. The server
//! stops when the [`TestDns`] is dropped.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

pub struct TestDns {
    /// Where the server listens, UDP and TCP.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    /// Owner names are lowercase and fully qualified.
    records: Vec<Record>,
    silent: bool,
    refuse: bool,
    queries: usize,
    asked: Vec<String>,
    negative_ttl: Option<u32>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl TestDns {
    /// Binds UDP and TCP on one free port of 127.0.0.1 and starts serving.
    pub async fn start() -> TestDns {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("bound UDP socket");
        let state = Arc::new(Mutex::new(State::default()));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, state.clone())),
            tokio::spawn(serve_tcp(tcp, state.clone())),
        ];
        TestDns { addr, state, tasks }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, name: &str, ttl: u32, data: RData) {
        let record = Record::from_rdata(fqdn(name), ttl, data);
        self.state().records.push(record);
    }

    /// An SRV record; `target` "." means "no service".
    pub fn add_srv(
        &self,
        name: &str,
        priority: u16,
        weight: u16,
        port: u16,
        target: &str,
        ttl: u32,
    ) {
        let target = if target == "." {
            Name::root()
        } else {
            fqdn(target)
        };
        self.add(
            name,
            ttl,
            RData::SRV(SRV::new(priority, weight, port, target)),
        );
    }

    pub fn add_a(&self, name: &str, ip: Ipv4Addr, ttl: u32) {
        self.add(name, ttl, RData::A(A(ip)));
    }

    pub fn add_aaaa(&self, name: &str, ip: Ipv6Addr, ttl: u32) {
        self.add(name, ttl, RData::AAAA(AAAA(ip)));
    }

    /// Forgets every record of `name`.
    // No test withdraws a record today; kept so the fake server can model
    // a record going away without a change to the harness.
    #[allow(dead_code)]
    pub fn remove(&self, name: &str) {
        let name = fqdn(name);
        self.state().records.retain(|r| r.name != name);
    }

    /// Drops every query unanswered (still counting it).
    pub fn set_silent(&self, silent: bool) {
        self.state().silent = silent;
    }

    /// Negative answers carry an SOA whose TTL and minimum are `ttl`
    /// (RFC 2308; the SOA of zone `test.`), or none.
    pub fn set_negative_ttl(&self, ttl: Option<u32>) {
        self.state().negative_ttl = ttl;
    }

    /// Answers every query with REFUSED.
    pub fn set_refuse(&self, refuse: bool) {
        self.state().refuse = refuse;
    }

    /// Every query that arrived, as `"name TYPE"` (name lowercase, with
    /// its final dot), in order.
    pub fn asked(&self) -> Vec<String> {
        self.state().asked.clone()
    }

    /// How many queries arrived, answered or not, over UDP and TCP.
    pub fn queries(&self) -> usize {
        self.state().queries
    }
}

fn fqdn(name: &str) -> Name {
    let mut n = Name::from_ascii(name).unwrap_or_else(|e| panic!("bad test name {name:?}: {e}"));
    n.set_fqdn(true);
    n.to_lowercase()
}

/// A UDP socket and a TCP listener on the same port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let addr = udp.local_addr().expect("bound UDP socket");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

async fn serve_udp(socket: UdpSocket, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = answer(&state, &buf[..n]) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<Mutex<State>>) {
    // Connection tasks live in this set: aborting the server aborts them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    conns.spawn(serve_tcp_conn(stream, state.clone()));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2) until the client closes.
async fn serve_tcp_conn(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        if let Some(reply) = answer(&state, &msg) {
            let Ok(n) = u16::try_from(reply.len()) else {
                return;
            };
            let mut out = n.to_be_bytes().to_vec();
            out.extend_from_slice(&reply);
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// The encoded answer to one query, or `None` to stay silent.
fn answer(state: &Mutex<State>, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.queries += 1;
    if let Some(q) = request.queries.first() {
        let line = format!("{} {}", q.name.to_lowercase(), q.query_type);
        st.asked.push(line);
    }
    if st.silent {
        return None;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    let Some(q) = request.queries.first().cloned() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply.to_vec().ok();
    };
    reply.add_query(q.clone());
    if request.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return reply.to_vec().ok();
    }
    if st.refuse {
        reply.metadata.response_code = ResponseCode::Refused;
        return reply.to_vec().ok();
    }
    let asked = q.name.to_lowercase();
    let mut exists = false;
    for r in st.records.iter().filter(|r| r.name == asked) {
        exists = true;
        if q.query_type == RecordType::ANY || r.record_type() == q.query_type {
            // Answer with the name exactly as asked (0x20 case randomization).
            let mut r = r.clone();
            r.name = q.name.clone();
            reply.add_answer(r);
        }
    }
    if reply.answers.is_empty() {
        if !exists {
            reply.metadata.response_code = ResponseCode::NXDomain;
        }
        if let Some(ttl) = st.negative_ttl {
            let zone = Name::from_ascii("test.").ok()?;
            let soa = SOA::new(
                Name::from_ascii("ns.test.").ok()?,
                Name::from_ascii("hostmaster.test.").ok()?,
                1,
                3600,
                600,
                86400,
                ttl,
            );
            reply.add_authority(Record::from_rdata(zone, ttl, RData::SOA(soa)));
        }
    }
    drop(st);
    reply.to_vec().ok()
}
