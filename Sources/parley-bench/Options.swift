import Foundation

/// The benchmark to run.
enum Scenario: String, CaseIterable, Sendable {
    case fanout
    case chat
    case ingest
    case connections
    case reconnect
    case rawFanout = "raw-fanout"
}

/// Which event loop the libwebsockets contexts run on.
enum EventLoop: String, Sendable {
    case libuv = "uv"
    case poll
}

/// A command-line mistake: printed with the usage hint, exit code 64.
struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

let usage = """
    usage: parley-bench <scenario> [options]
           parley-bench help

    A load generator for the Parley relay: many WebSocket connections on a few libwebsockets
    service threads, latency in HDR histograms, gaps and duplicates checked from the seq numbers.

    scenarios:
      fanout        1 sender, 1 channel, --subscribers connections following it
      chat          --members users in --channels channels (member i in channel i mod channels),
                    every member subscribed to its channel and sending to it
      ingest        --senders users sending into --channels channels, nobody subscribed;
                    closed loop by default (durable messages/s = acks/s)
      connections   --count idle authenticated subscribers; time to connect them all and the
                    relay's memory per connection (--relay-pid)
      reconnect     --subscribers on --channels channels while one sender sends; after --before
                    seconds every subscriber drops at once and resumes with subscribe `after`;
                    reports the time until all have caught up, and loss (must be 0)
      raw-fanout    the fanout load against a plain WebSocket pub/sub server (e.g. nginx+nchan):
                    the publisher connects to --pub-url, the subscribers to --sub-url; no auth

    target:
      --url URL                 the relay's WebSocket URL (default ws://127.0.0.1:8080/ws)
      --pub-url URL             raw-fanout: where the publisher sends
      --sub-url URL             raw-fanout: where the subscribers listen
      --subscriber-url URL      fanout, chat, reconnect: the subscriber connections go here (e.g. a
                                second relay node on the same database), while setup and the
                                senders use --url. chat: every member then has two connections,
                                a sender on --url and a subscriber here (give --subscriber-url
                                equal to --url for the same shape on one relay)

    load:
      --duration S              seconds of measured load (default 10); connections: seconds to
                                hold the connections open
      --warmup S                seconds of load before measuring starts (default 0)
      --rate N                  messages per second, all senders together, paced per sender on
                                a fixed schedule; latency counts from the scheduled time (no
                                coordinated omission). 0 = closed loop. Defaults: fanout 1000,
                                chat 1000, ingest 0, reconnect 200, raw-fanout 1000
      --inflight K              closed loop: messages each sender keeps unacknowledged (default 4)
      --size BYTES              ciphertext bytes per message, 24...65536 (default 1024)
      --subscribers N           fanout, reconnect, raw-fanout: subscriber connections (default 100)
      --members N               chat: members (default 200)
      --channels N              chat (default 50), ingest (default 200), reconnect (default 10)
      --senders N               ingest: senders (default 200)
      --count N                 connections: connections to hold (default 1000)
      --users N                 most accounts to sign up for subscriber connections; more
                                connections than accounts share sessions (default: one account
                                per connection, at most \(Topology.maxMembersPerChannel - 1) per channel)
      --before S                reconnect: seconds of sending before the drop (default 3)
      --after S                 reconnect: seconds of sending after all caught up (default 2)

    clients:
      --threads N               libwebsockets service threads, each with its own context (default 1)
      --event-loop uv|poll      libwebsockets on libuv (epoll, the default) or on its own poll() loop
      --source-addresses K      bind client sockets to 127.0.0.1 ... 127.0.0.K, round robin, to stay
                                under the relay's per-address limit and the ephemeral port range
                                (default 1: no binding)
      --connect-concurrency N   handshakes in progress at once per thread (default 200)
      --key-pool N              RSA-2048 key pairs generated and shared among the accounts;
                                every account is still its own user (default 8)
      --setup-concurrency N     signups and channel setups in parallel (default 16)
      --connect-timeout S       seconds for every connection to be ready, and (reconnect) for
                                every subscriber to catch up after the drop (default 120)
      --drain-timeout S         seconds to wait for outstanding acks and deliveries (default 30)

    measurement:
      --relay-pid PID[,PID...]  the relay (raw-fanout: the server's master process): its RSS and
                                CPU seconds, with its children's but not PostgreSQL's; several
                                relay nodes: comma-separated, reported summed and each
      --postgres-pids LIST      comma-separated PostgreSQL pids whose CPU seconds (with their
                                children's) are reported; default: the first relay's embedded
                                cluster (<relay --data-dir>/postgres/postmaster.pid)
      --json PATH               also write every number as JSON to PATH
      --quiet                   no progress lines on stderr

    The relay must run with rate limits off and with connection limits above the load, e.g.:
      parley-server serve --rate-limits off --auth-timeout 0 \\
        --max-connections 60000 --max-connections-per-address 60000
    (`ulimit -n` of both processes must exceed the connections; for more than ~28,000
    connections from one host use --source-addresses; a run longer than the relay's
    --key-ttl, 3600 s by default, meets key_expired.) Messages are opaque bytes of the
    requested size with a unique IV, not real AES-GCM: the relay never decrypts, so client
    crypto stays off the measured path. Exit status: 0 ok, 1 gaps, duplicates, loss or too few
    connections, 2 setup failed, 64 usage.

    """

/// Every option of every scenario, with the scenario's defaults filled in.
struct BenchOptions: Sendable {
    var scenario: Scenario
    var url = URL(string: "ws://127.0.0.1:8080/ws")!
    var pubURL: URL?
    var subURL: URL?
    var subscriberURL: URL?
    var duration = 10.0
    var warmup = 0.0
    var rate = 0.0
    var inflight = 4
    var size = 1024
    var subscribers = 100
    var members = 200
    var channels = 0
    var senders = 200
    var count = 1000
    var users: Int?
    var before = 3.0
    var after = 2.0
    var threads = 1
    var eventLoop = EventLoop.libuv
    var sourceAddresses = 1
    var connectConcurrency = 200
    var keyPool = 8
    var setupConcurrency = 16
    var connectTimeout = 120.0
    var drainTimeout = 30.0
    var relayPIDs: [Int32] = []
    var postgresPIDs: [Int32] = []
    var jsonPath: String?
    var quiet = false

    /// Parses `arguments` (without the program name). Returns nil for `help`.
    static func parse(_ arguments: [String]) throws -> BenchOptions? {
        var remaining = arguments[...]
        guard let first = remaining.popFirst() else { throw UsageError("no scenario given") }
        if ["help", "-h", "--help"].contains(first) { return nil }
        guard let scenario = Scenario(rawValue: first) else { throw UsageError("unknown scenario \(first)") }
        var options = BenchOptions(scenario: scenario)
        options.applyScenarioDefaults()

        while let argument = remaining.popFirst() {
            var name = argument
            var inline: String?
            if let equals = argument.firstIndex(of: "=") {
                name = String(argument[..<equals])
                inline = String(argument[argument.index(after: equals)...])
            }
            if name == "-h" || name == "--help" { return nil }
            if name == "--quiet" {
                options.quiet = true
                continue
            }
            guard let value = inline ?? remaining.popFirst() else { throw UsageError("\(name) needs a value") }
            try options.apply(name, value)
        }
        try options.validate()
        return options
    }

    private mutating func applyScenarioDefaults() {
        switch scenario {
        case .fanout, .rawFanout: rate = 1000
        case .chat: rate = 1000; channels = 50
        case .ingest: rate = 0; channels = 200
        case .reconnect: rate = 200; channels = 10
        case .connections: rate = 0
        }
    }

    private mutating func apply(_ name: String, _ value: String) throws {
        switch name {
        case "--url": url = try webSocketURL(value, name)
        case "--pub-url": pubURL = try webSocketURL(value, name)
        case "--sub-url": subURL = try webSocketURL(value, name)
        case "--subscriber-url": subscriberURL = try webSocketURL(value, name)
        case "--duration": duration = try nonNegative(value, name)
        case "--warmup": warmup = try nonNegative(value, name)
        case "--rate": rate = try nonNegative(value, name)
        case "--inflight": inflight = try positiveInteger(value, name)
        case "--size": size = try positiveInteger(value, name)
        case "--subscribers": subscribers = try positiveInteger(value, name)
        case "--members": members = try positiveInteger(value, name)
        case "--channels": channels = try positiveInteger(value, name)
        case "--senders": senders = try positiveInteger(value, name)
        case "--count": count = try positiveInteger(value, name)
        case "--users": users = try positiveInteger(value, name)
        case "--before": before = try nonNegative(value, name)
        case "--after": after = try nonNegative(value, name)
        case "--threads": threads = try positiveInteger(value, name)
        case "--event-loop":
            guard let loop = EventLoop(rawValue: value) else { throw UsageError("\(name) takes uv or poll") }
            eventLoop = loop
        case "--source-addresses": sourceAddresses = try positiveInteger(value, name)
        case "--connect-concurrency": connectConcurrency = try positiveInteger(value, name)
        case "--key-pool": keyPool = try positiveInteger(value, name)
        case "--setup-concurrency": setupConcurrency = try positiveInteger(value, name)
        case "--connect-timeout": connectTimeout = try nonNegative(value, name)
        case "--drain-timeout": drainTimeout = try nonNegative(value, name)
        case "--relay-pid":
            relayPIDs = try value.split(separator: ",").map { try processID(String($0), name) }
        case "--postgres-pids":
            postgresPIDs = try value.split(separator: ",").map { try processID(String($0), name) }
        case "--json": jsonPath = value
        default: throw UsageError("unknown option \(name)")
        }
    }

    private func validate() throws {
        guard (BenchPayload.headerBytes...65_536).contains(size) else {
            throw UsageError("--size must be \(BenchPayload.headerBytes)...65536")
        }
        guard (1...254).contains(sourceAddresses) else { throw UsageError("--source-addresses must be 1...254") }
        if scenario == .rawFanout {
            guard pubURL != nil, subURL != nil else { throw UsageError("raw-fanout needs --pub-url and --sub-url") }
            guard rate > 0 else { throw UsageError("raw-fanout needs --rate > 0 (a plain pub/sub server sends no acks)") }
        }
        if scenario == .reconnect, rate <= 0 { throw UsageError("reconnect needs --rate > 0") }
        if subscriberURL != nil, ![.fanout, .chat, .reconnect].contains(scenario) {
            throw UsageError("--subscriber-url is for fanout, chat and reconnect")
        }
    }

    /// The rate each of `senders` senders keeps (0: closed loop).
    func ratePerSender(_ senders: Int) -> Double { rate > 0 ? rate / Double(max(1, senders)) : 0 }

    /// The source address of the `index`-th connection (nil: let the kernel choose).
    func sourceAddress(_ index: Int) -> String? {
        sourceAddresses > 1 ? "127.0.0.\(index % sourceAddresses + 1)" : nil
    }
}

private func webSocketURL(_ text: String, _ name: String) throws -> URL {
    guard let url = URL(string: text), let scheme = url.scheme, scheme == "ws" || scheme == "wss", url.host != nil else {
        throw UsageError("\(name) takes a ws:// or wss:// URL")
    }
    return url
}

private func nonNegative(_ text: String, _ name: String) throws -> Double {
    guard let value = Double(text), value >= 0, value.isFinite else { throw UsageError("\(name) takes a number >= 0") }
    return value
}

private func positiveInteger(_ text: String, _ name: String) throws -> Int {
    guard let value = Int(text), value >= 1 else { throw UsageError("\(name) takes an integer >= 1") }
    return value
}

private func processID(_ text: String, _ name: String) throws -> Int32 {
    guard let value = Int32(text), value > 0 else { throw UsageError("\(name) takes process ids") }
    return value
}
