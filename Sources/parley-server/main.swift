// parley-server: configuration and wiring only. The relay itself lives in ParleyServer.
import Foundation
import ParleyServer
import ParleyStore

let usage = """
    usage: parley-server [serve|migrate|help] [options]

    commands:
      serve      run the relay (the default)
      migrate    apply the database migrations and exit; a second run changes nothing

    options (each also read from the environment variable named after it):
      --listen HOST:PORT    address to serve on (PARLEY_LISTEN, default 127.0.0.1:8080)
      --database-url URL    PostgreSQL to use (PARLEY_DATABASE_URL); default: an embedded
                            cluster in the data directory
      --data-dir DIR        data directory of the embedded cluster (PARLEY_DATA_DIR, default .parley)
      --migrations DIR      migrations folder (PARLEY_MIGRATIONS_DIR, default: ./migrations)
      --key-ttl SECONDS     channel key lifetime (PARLEY_KEY_TTL, default 3600)
      --session-ttl SECONDS session lifetime, not sliding (PARLEY_SESSION_TTL, default 2592000 = 30 days)
      --db-workers N        database worker threads (PARLEY_DB_WORKERS, default 4)
      --max-frame-bytes N   largest client message (PARLEY_MAX_FRAME_BYTES, default 262144)
      --max-ciphertext-bytes N
                            largest message ciphertext (PARLEY_MAX_CIPHERTEXT_BYTES, default 65536)
      --queue-bytes N       live bytes queued per connection before 4008 (PARLEY_QUEUE_BYTES, default 4 MiB)
      --rate-limits on|off  the contract's rate limits (PARLEY_RATE_LIMITS, default on)
      --rate-connection R/B requests per second and burst per connection (PARLEY_RATE_CONNECTION, 50/200)
      --rate-messages R/B   messages per second and burst per user (PARLEY_RATE_MESSAGES, 20/100)
      --rate-signups N      signups per minute per address (PARLEY_RATE_SIGNUPS, 30)
      --rate-logins N       logins per minute per username and per address (PARLEY_RATE_LOGINS, 10)
      --max-connections N   open WebSocket connections at most; past it 503 (PARLEY_MAX_CONNECTIONS, default 10000)
      --max-connections-per-address N
                            connections per peer address; past it 429 (PARLEY_MAX_CONNECTIONS_PER_ADDRESS, default 256)
      --auth-timeout SECONDS
                            close (1008) connections not authenticated by then; 0 = off (PARLEY_AUTH_TIMEOUT, default 10)
      --allowed-origins LIST
                            comma-separated Origins a handshake may carry, else 403; empty = any
                            (PARLEY_ALLOWED_ORIGINS, default empty)
      --log-level LEVEL     error, warn, info or debug (PARLEY_LOG_LEVEL, default info)
      --log-format FORMAT   text (logfmt) or json, one line per event (PARLEY_LOG_FORMAT, default text)
      --web-root DIR        the web client's folder, served at / (PARLEY_WEB_ROOT; default ./web, then
                            ../share/parley/web beside the binary; "none" serves no page)
      --tls-cert FILE       PEM certificate for wss:// (PARLEY_TLS_CERT)
      --tls-key FILE        PEM private key for wss:// (PARLEY_TLS_KEY)

    """

/// Command-line options win over the environment, which wins over the defaults.
struct Options {
    var command = "serve"
    var database = DatabaseConfiguration()
    var relay = RelayConfiguration()
    /// `--web-root` as given: nil looks for the default folder, "none" serves no page.
    var webRoot: String?

    init(arguments: [String], environment: [String: String]) throws {
        for setting in Self.settings {
            if let value = environment[setting.environment] { try setting.apply(&self, value, setting.environment) }
        }
        var remaining = arguments[...]
        if let first = remaining.first, !first.hasPrefix("-") {
            command = first
            remaining = remaining.dropFirst()
        }
        while let argument = remaining.popFirst() {
            var name = argument, value: String?
            if let equals = argument.firstIndex(of: "=") {
                name = String(argument[..<equals])
                value = String(argument[argument.index(after: equals)...])
            }
            if name == "-h" || name == "--help" {
                command = "help"
                continue
            }
            guard let setting = Self.settings.first(where: { $0.flag == name }) else {
                throw UsageError("unknown option \(name)")
            }
            guard let given = value ?? remaining.popFirst() else { throw UsageError("\(name) needs a value") }
            try setting.apply(&self, given, name)
        }
    }

    /// One setting: its flag, its environment variable, and how it applies a value.
    struct Setting: Sendable {
        let flag: String
        let environment: String
        let apply: @Sendable (inout Options, String, String) throws -> Void
    }

    static let settings: [Setting] = [
        Setting(flag: "--listen", environment: "PARLEY_LISTEN") { options, value, _ in try options.setListen(value) },
        Setting(flag: "--database-url", environment: "PARLEY_DATABASE_URL") { options, value, _ in options.database.url = value },
        Setting(flag: "--data-dir", environment: "PARLEY_DATA_DIR") { options, value, _ in
            options.database.dataDirectory = URL(fileURLWithPath: value)
        },
        Setting(flag: "--migrations", environment: "PARLEY_MIGRATIONS_DIR") { options, value, _ in
            options.database.migrationsDirectory = URL(fileURLWithPath: value)
        },
        Setting(flag: "--key-ttl", environment: "PARLEY_KEY_TTL") { options, value, name in
            options.relay.keyTTLSeconds = try positive(value, name)
        },
        Setting(flag: "--session-ttl", environment: "PARLEY_SESSION_TTL") { options, value, name in
            options.relay.sessionTTLSeconds = try positive(value, name)
        },
        Setting(flag: "--db-workers", environment: "PARLEY_DB_WORKERS") { options, value, name in
            options.relay.databaseWorkers = try positive(value, name)
        },
        Setting(flag: "--max-frame-bytes", environment: "PARLEY_MAX_FRAME_BYTES") { options, value, name in
            options.relay.maxFrameBytes = try positive(value, name)
        },
        Setting(flag: "--max-ciphertext-bytes", environment: "PARLEY_MAX_CIPHERTEXT_BYTES") { options, value, name in
            options.relay.maxCiphertextBytes = try positive(value, name)
        },
        Setting(flag: "--queue-bytes", environment: "PARLEY_QUEUE_BYTES") { options, value, name in
            options.relay.outgoingQueueBytes = try positive(value, name)
        },
        Setting(flag: "--rate-limits", environment: "PARLEY_RATE_LIMITS") { options, value, name in
            options.relay.rateLimits.enabled = try onOff(value, name)
        },
        Setting(flag: "--rate-connection", environment: "PARLEY_RATE_CONNECTION") { options, value, name in
            (options.relay.rateLimits.connectionRate, options.relay.rateLimits.connectionBurst) = try rateAndBurst(value, name)
        },
        Setting(flag: "--rate-messages", environment: "PARLEY_RATE_MESSAGES") { options, value, name in
            (options.relay.rateLimits.messageRate, options.relay.rateLimits.messageBurst) = try rateAndBurst(value, name)
        },
        Setting(flag: "--rate-signups", environment: "PARLEY_RATE_SIGNUPS") { options, value, name in
            options.relay.rateLimits.signupsPerMinute = Double(try positive(value, name))
        },
        Setting(flag: "--rate-logins", environment: "PARLEY_RATE_LOGINS") { options, value, name in
            options.relay.rateLimits.loginsPerMinute = Double(try positive(value, name))
        },
        Setting(flag: "--max-connections", environment: "PARLEY_MAX_CONNECTIONS") { options, value, name in
            options.relay.maxConnections = try positive(value, name)
        },
        Setting(flag: "--max-connections-per-address", environment: "PARLEY_MAX_CONNECTIONS_PER_ADDRESS") { options, value, name in
            options.relay.maxConnectionsPerAddress = try positive(value, name)
        },
        Setting(flag: "--auth-timeout", environment: "PARLEY_AUTH_TIMEOUT") { options, value, name in
            guard let seconds = Int(value), seconds >= 0 else { throw UsageError("\(name) takes seconds (0 = off)") }
            options.relay.authTimeoutSeconds = seconds
        },
        Setting(flag: "--allowed-origins", environment: "PARLEY_ALLOWED_ORIGINS") { options, value, _ in
            options.relay.allowedOrigins = value.split(separator: ",")
                .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        },
        Setting(flag: "--web-root", environment: "PARLEY_WEB_ROOT") { options, value, _ in
            options.webRoot = value
        },
        Setting(flag: "--log-level", environment: "PARLEY_LOG_LEVEL") { options, value, name in
            guard let level = RelayConfiguration.LogLevel(rawValue: value) else {
                throw UsageError("\(name) takes error, warn, info or debug")
            }
            options.relay.logLevel = level
        },
        Setting(flag: "--log-format", environment: "PARLEY_LOG_FORMAT") { options, value, name in
            guard let format = Log.Format(rawValue: value) else { throw UsageError("\(name) takes text or json") }
            options.relay.logFormat = format
        },
        Setting(flag: "--tls-cert", environment: "PARLEY_TLS_CERT") { options, value, _ in options.relay.tlsCertificatePath = value },
        Setting(flag: "--tls-key", environment: "PARLEY_TLS_KEY") { options, value, _ in options.relay.tlsKeyPath = value },
    ]
}

extension Options {
    mutating func setListen(_ value: String) throws {
        guard let colon = value.lastIndex(of: ":"), let port = Int(value[value.index(after: colon)...]),
              (0...65535).contains(port) else {
            throw UsageError("--listen takes HOST:PORT, e.g. 127.0.0.1:8080")
        }
        relay.host = String(value[..<colon])
        relay.port = port
    }

    static func rateAndBurst(_ value: String, _ name: String) throws -> (Double, Double) {
        let parts = value.split(separator: "/")
        guard parts.count == 2, let rate = Double(parts[0]), let burst = Double(parts[1]), rate > 0, burst >= 1 else {
            throw UsageError("\(name) takes RATE/BURST, e.g. 50/200")
        }
        return (rate, burst)
    }

    static func onOff(_ value: String, _ name: String) throws -> Bool {
        switch value {
        case "on": return true
        case "off": return false
        default: throw UsageError("\(name) takes on or off")
        }
    }

    static func positive(_ value: String, _ name: String) throws -> Int {
        guard let number = Int(value), number > 0 else { throw UsageError("\(name) takes a positive integer") }
        return number
    }
}

struct UsageError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// The process's log, replaced once the options are read (before any other thread starts).
/// Startup and shutdown lines never carry secrets: none pass through here.
nonisolated(unsafe) var log = Log(level: .info)

/// Opens the database (starting the embedded cluster when no URL is given) and applies
/// the migrations. The caller closes it.
func openMigratedDatabase(_ options: Options) throws -> Database {
    let database = try Database(configuration: options.database)
    do {
        if let embedded = database.embedded {
            log.info("database.embedded", "embedded PostgreSQL in \(embedded.clusterDirectory.path)",
                     ["dir": .string(embedded.clusterDirectory.path)])
        }
        let report = try database.migrate(configuration: options.database)
        if report.applied.isEmpty {
            log.info("migrations.current", "schema up to date (\(report.alreadyApplied.count) migrations applied earlier)",
                     ["applied_earlier": .int(report.alreadyApplied.count)])
        } else {
            let applied = report.applied.map(String.init).joined(separator: ",")
            log.info("migrations.applied", "applied migrations \(applied)", ["applied": .string(applied)])
        }
        if !report.unknown.isEmpty {
            let unknown = report.unknown.map(String.init).joined(separator: ",")
            log.warn("migrations.unknown", "the database also has migrations \(unknown) from a newer relay",
                     ["unknown": .string(unknown)])
        }
        return database
    } catch {
        try? database.close()
        throw error
    }
}

func close(_ database: Database) {
    do {
        try database.close()
    } catch {
        log.error("database.stop_failed", "stopping the embedded database failed", ["error": .string("\(error)")])
    }
}

func runMigrate(_ options: Options) throws {
    close(try openMigratedDatabase(options))
}

/// Lifts the soft open-file limit to the hard one (each connection is a descriptor; lws
/// sizes its tables from this limit when the context is made). Returns the limit in force.
func raiseOpenFileLimit() -> Int {
    var limit = rlimit()
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    guard getrlimit(resource, &limit) == 0 else { return 0 }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(resource, &raised) == 0 { limit = raised }
    }
    return Int(clamping: limit.rlim_cur)
}

func runServe(_ options: Options) throws {
    guard (options.relay.tlsCertificatePath == nil) == (options.relay.tlsKeyPath == nil) else {
        throw UsageError("--tls-cert and --tls-key go together")
    }
    // SIGINT and SIGTERM are taken with sigwait on this thread: block them before any
    // other thread starts, so none of them is interrupted instead.
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    signal(SIGPIPE, SIG_IGN)

    let files = raiseOpenFileLimit()
    if files < options.relay.maxConnections + 64 {
        log.warn("relay.file_limit", "the open-file limit is below --max-connections: raise `ulimit -n`",
                 ["open_files": .int(files), "max_connections": .int(options.relay.maxConnections)])
    }
    let database = try openMigratedDatabase(options)
    defer { close(database) }
    try database.requireDurableCommits()
    var configuration = options.relay
    switch options.webRoot {
    case "none", "": configuration.webRoot = nil
    case let folder?: configuration.webRoot = URL(fileURLWithPath: folder)
    case nil: configuration.webRoot = ResourceFolder.locate("web")
    }
    let relay = Relay(configuration: configuration, connectionString: database.connectionString, log: log)
    try relay.start()
    let scheme = options.relay.tlsCertificatePath == nil ? "ws" : "wss"
    let url = "\(scheme)://\(options.relay.host):\(relay.port)/ws"
    let health = "http://\(options.relay.host):\(relay.port)/healthz"
    log.info("relay.listening", "relay listening on \(url) (health: \(health))",
             ["url": .string(url), "health": .string(health), "web": .string(configuration.webRoot?.path ?? "none"),
              "db_workers": .int(options.relay.databaseWorkers),
              "max_connections": .int(options.relay.maxConnections), "open_files": .int(files)])

    var received: Int32 = 0
    sigwait(&signals, &received)
    log.info("relay.stopping", "signal \(received): stopping", ["signal": .int(Int(received))])
    let started = Date()
    relay.stop()
    log.info("relay.stopped", "relay stopped", ["stop_ms": .int(Int(Date().timeIntervalSince(started) * 1000))])
}

do {
    let options = try Options(arguments: Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment)
    log = Log(level: options.relay.logLevel, format: options.relay.logFormat)
    switch options.command {
    case "migrate":
        try runMigrate(options)
    case "help":
        print(usage, terminator: "")
    case "serve":
        try runServe(options)
    default:
        throw UsageError("unknown command \(options.command)")
    }
} catch let error as UsageError {
    log.error("usage", error.message)
    FileHandle.standardError.write(Data(usage.utf8))
    exit(64)
} catch let error as StoreError {
    // At startup the detail names paths, settings and server messages, never secrets: no
    // request has been served yet.
    log.error("startup.failed", "\(error.description): \(error.detail)")
    exit(1)
} catch {
    log.error("startup.failed", "\(error)")
    exit(1)
}
