//! The floor of a request/response relay through Redis streams on this machine, with no broker
//! code at all: what `scripts/bench-forward` compares the broker's c=1 latency against.
//!
//! Plain blocking sockets and hand-written RESP, one OS thread per side, so nothing but the
//! kernel, the network stack and redis-server is measured:
//!
//! - `ping`: one PING round trip (two process crossings);
//! - `relay`: the requester pipelines `XADD req` + `XREAD BLOCK` on its reply stream; a worker
//!   thread blocked in `XREADGROUP BLOCK` gets the entry and pipelines `XADD rep` + `XACK`.
//!   Four crossings (requester → Redis → worker → Redis → requester), as in the broker, where
//!   the ingress, Redis and the proxy are separate processes too.
//!
//! `relay-floor PORT [COUNT]` prints one line `RELAY_FLOOR {"ping_p50":…,"relay_p50":…,…}`
//! (milliseconds) after COUNT (default 5000) round trips of each.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One RESP value, as far as this tool needs it.
enum Resp {
    Simple(Vec<u8>),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

type Result<T> = std::result::Result<T, String>;

impl Conn {
    /// A connection whose reads give up after `read_timeout` (`None`: never, for the worker,
    /// which waits in `XREADGROUP BLOCK 0` for as long as the PING phase takes).
    fn open(port: u16, read_timeout: Option<Duration>) -> Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("cannot connect to redis on port {port}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(read_timeout)
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(Conn {
            writer: stream,
            reader,
        })
    }

    /// Sends the commands in one write (a pipeline).
    fn send(&mut self, commands: &[&[&str]]) -> Result<()> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for arg in *args {
                out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
            }
        }
        self.writer
            .write_all(&out)
            .map_err(|e| format!("write: {e}"))
    }

    fn line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("read: {e}"))?;
        if line.len() < 3 {
            return Err("redis closed the connection".into());
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read(&mut self) -> Result<Resp> {
        let line = self.line()?;
        let rest = &line[1..];
        let number = || -> Result<i64> {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad length in {:?}", String::from_utf8_lossy(&line)))
        };
        match line[0] {
            b'+' | b':' => Ok(Resp::Simple(rest.to_vec())),
            b'-' => Err(format!("redis: {}", String::from_utf8_lossy(rest))),
            b'$' => match number()? {
                n if n < 0 => Ok(Resp::Bulk(None)),
                n => {
                    let mut data = vec![0; n as usize + 2];
                    self.reader
                        .read_exact(&mut data)
                        .map_err(|e| format!("read: {e}"))?;
                    data.truncate(n as usize);
                    Ok(Resp::Bulk(Some(data)))
                }
            },
            b'*' => match number()? {
                n if n < 0 => Ok(Resp::Array(None)),
                n => (0..n)
                    .map(|_| self.read())
                    .collect::<Result<Vec<_>>>()
                    .map(|items| Resp::Array(Some(items))),
            },
            other => Err(format!("unexpected RESP type {:?}", other as char)),
        }
    }
}

/// The id of the last entry in an XREAD/XREADGROUP reply (`[[stream, [[id, fields]…]]]`).
fn last_id(reply: &Resp) -> Option<String> {
    let Resp::Array(Some(streams)) = reply else {
        return None;
    };
    let Resp::Array(Some(stream)) = streams.first()? else {
        return None;
    };
    let Resp::Array(Some(entries)) = stream.get(1)? else {
        return None;
    };
    let Resp::Array(Some(entry)) = entries.last()? else {
        return None;
    };
    match entry.first()? {
        Resp::Bulk(Some(id)) | Resp::Simple(id) => String::from_utf8(id.clone()).ok(),
        _ => None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn run(port: u16, count: usize) -> Result<String> {
    let timeout = Some(Duration::from_secs(10));
    let mut control = Conn::open(port, timeout)?;
    control.send(&[
        &["DEL", "relay-floor:req", "relay-floor:rep"],
        &["XGROUP", "CREATE", "relay-floor:req", "g", "$", "MKSTREAM"],
        &["XADD", "relay-floor:rep", "*", "start", "1"],
    ])?;
    control.read()?;
    control.read()?;
    let Resp::Bulk(Some(start)) = control.read()? else {
        return Err("XADD gave no id".into());
    };
    let mut last = String::from_utf8_lossy(&start).into_owned();

    let mut worker = Conn::open(port, None)?;
    let worker_thread = std::thread::spawn(move || -> Result<()> {
        loop {
            worker.send(&[&[
                "XREADGROUP",
                "GROUP",
                "g",
                "w",
                "COUNT",
                "1",
                "BLOCK",
                "0",
                "STREAMS",
                "relay-floor:req",
                ">",
            ]])?;
            let reply = worker.read()?;
            let id = last_id(&reply).ok_or("XREADGROUP returned no entry")?;
            worker.send(&[
                &["XADD", "relay-floor:rep", "*", "reply_to", &id],
                &["XACK", "relay-floor:req", "g", &id],
            ])?;
            worker.read()?;
            worker.read()?;
        }
    });

    let mut requester = Conn::open(port, timeout)?;
    let payload = "x".repeat(100);
    let mut ping = Vec::with_capacity(count);
    let mut relay = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        requester.send(&[&["PING"]])?;
        requester.read()?;
        ping.push(started.elapsed());
    }
    for _ in 0..count {
        let started = Instant::now();
        requester.send(&[
            &["XADD", "relay-floor:req", "*", "payload", &payload],
            &[
                "XREAD",
                "COUNT",
                "10",
                "BLOCK",
                "5000",
                "STREAMS",
                "relay-floor:rep",
                &last,
            ],
        ])?;
        requester.read()?;
        let reply = requester.read()?;
        let Some(id) = last_id(&reply) else {
            // Say why the worker stopped, if it did.
            if worker_thread.is_finished() {
                return Err(match worker_thread.join() {
                    Ok(Err(err)) => format!("the worker stopped: {err}"),
                    _ => "the worker stopped".into(),
                });
            }
            return Err("no reply within 5 s although the worker runs".into());
        };
        last = id;
        relay.push(started.elapsed());
    }
    control.send(&[&["DEL", "relay-floor:req", "relay-floor:rep"]])?;
    control.read()?;
    ping.sort();
    relay.sort();
    Ok(format!(
        r#"{{"count":{count},"ping_p50":{:.3},"ping_p99":{:.3},"relay_p50":{:.3},"relay_p99":{:.3}}}"#,
        percentile(&ping, 0.5),
        percentile(&ping, 0.99),
        percentile(&relay, 0.5),
        percentile(&relay, 0.99)
    ))
}

/// Most round trips of each kind (the timings are kept in memory).
const MAX_COUNT: usize = 1_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = args.first().and_then(|p| p.parse::<u16>().ok());
    let count = args
        .get(1)
        .map_or(Some(5000), |c| c.parse::<usize>().ok())
        .filter(|c| (1..=MAX_COUNT).contains(c));
    let (Some(port), Some(count), true) = (port, count, args.len() <= 2) else {
        eprintln!(
            "usage: relay-floor REDIS_PORT [COUNT]  (a redis-server on 127.0.0.1; COUNT 1..={MAX_COUNT}, default 5000)"
        );
        std::process::exit(2);
    };
    match run(port, count) {
        Ok(json) => println!("RELAY_FLOOR {json}"),
        Err(err) => {
            eprintln!("relay-floor: {err}");
            std::process::exit(1);
        }
    }
}
