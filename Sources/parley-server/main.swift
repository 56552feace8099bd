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
      --db-workers N        database worker threads (PARLEY_DB_WORKERS, default 4)
      --rate-limits on|off  the contract's rate limits (PARLEY_RATE_LIMITS, default on)
      --tls-cert FILE       PEM certificate for wss:// (PARLEY_TLS_CERT)
      --tls-key FILE        PEM private key for wss:// (PARLEY_TLS_KEY)

    """

/// Command-line options win over the environment, which wins over the defaults.
struct Options {
    var command = "serve"
    var database = DatabaseConfiguration()
    var relay = RelayConfiguration()

    init(arguments: [String], environment: [String: String]) throws {
        if let value = environment["PARLEY_LISTEN"] { try setListen(value) }
        if let value = environment["PARLEY_KEY_TTL"] { relay.keyTTLSeconds = try positive(value, "PARLEY_KEY_TTL") }
        if let value = environment["PARLEY_DB_WORKERS"] { relay.databaseWorkers = try positive(value, "PARLEY_DB_WORKERS") }
        if let value = environment["PARLEY_RATE_LIMITS"] { relay.rateLimits.enabled = try onOff(value, "PARLEY_RATE_LIMITS") }
        if let value = environment["PARLEY_TLS_CERT"] { relay.tlsCertificatePath = value }
        if let value = environment["PARLEY_TLS_KEY"] { relay.tlsKeyPath = value }
        if let value = environment["PARLEY_DATABASE_URL"] { database.url = value }
        if let value = environment["PARLEY_DATA_DIR"] { database.dataDirectory = URL(fileURLWithPath: value) }
        if let value = environment["PARLEY_MIGRATIONS_DIR"] { database.migrationsDirectory = URL(fileURLWithPath: value) }
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
            func next() throws -> String {
                if let value { return value }
                guard let following = remaining.popFirst() else { throw UsageError("\(name) needs a value") }
                return following
            }
            switch name {
            case "--listen": try setListen(try next())
            case "--key-ttl": relay.keyTTLSeconds = try positive(try next(), name)
            case "--db-workers": relay.databaseWorkers = try positive(try next(), name)
            case "--rate-limits": relay.rateLimits.enabled = try onOff(try next(), name)
            case "--tls-cert": relay.tlsCertificatePath = try next()
            case "--tls-key": relay.tlsKeyPath = try next()
            case "--database-url": database.url = try next()
            case "--data-dir": database.dataDirectory = URL(fileURLWithPath: try next())
            case "--migrations": database.migrationsDirectory = URL(fileURLWithPath: try next())
            case "-h", "--help": command = "help"
            default: throw UsageError("unknown option \(name)")
            }
        }
    }
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

    func onOff(_ value: String, _ name: String) throws -> Bool {
        switch value {
        case "on": return true
        case "off": return false
        default: throw UsageError("\(name) takes on or off")
        }
    }

    func positive(_ value: String, _ name: String) throws -> Int {
        guard let number = Int(value), number > 0 else { throw UsageError("\(name) takes a positive integer") }
        return number
    }
}

struct UsageError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

func log(_ text: String) {
    FileHandle.standardError.write(Data("parley-server: \(text)\n".utf8))
}

func runMigrate(_ options: Options) throws {
    let database = try Database(configuration: options.database)
    defer {
        do { try database.close() } catch { log("stopping the embedded database failed: \(error)") }
    }
    if let embedded = database.embedded {
        log("embedded PostgreSQL in \(embedded.clusterDirectory.path)")
    }
    let report = try database.migrate(configuration: options.database)
    if report.applied.isEmpty {
        log("schema up to date (\(report.alreadyApplied.count) migrations applied earlier)")
    } else {
        log("applied migrations \(report.applied.map(String.init).joined(separator: ", "))")
    }
    if !report.unknown.isEmpty {
        log("the database also has migrations \(report.unknown.map(String.init).joined(separator: ", ")) from a newer relay")
    }
}

func runServe(_ options: Options) throws {
    // SIGINT and SIGTERM are taken with sigwait on this thread: block them before any
    // other thread starts, so none of them is interrupted instead.
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    signal(SIGPIPE, SIG_IGN)

    let database = try Database(configuration: options.database)
    defer {
        do { try database.close() } catch { log("stopping the embedded database failed: \(error)") }
    }
    if let embedded = database.embedded {
        log("embedded PostgreSQL in \(embedded.clusterDirectory.path)")
    }
    let report = try database.migrate(configuration: options.database)
    if !report.applied.isEmpty {
        log("applied migrations \(report.applied.map(String.init).joined(separator: ", "))")
    }
    let relay = Relay(configuration: options.relay, connectionString: database.connectionString)
    try relay.start()
    let scheme = options.relay.tlsCertificatePath == nil ? "ws" : "wss"
    log("relay listening on \(scheme)://\(options.relay.host):\(relay.port)/ws (health: http://\(options.relay.host):\(relay.port)/healthz)")

    var received: Int32 = 0
    sigwait(&signals, &received)
    log("signal \(received): stopping")
    relay.stop()
}

do {
    let options = try Options(arguments: Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment)
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
    log(error.message)
    FileHandle.standardError.write(Data(usage.utf8))
    exit(64)
} catch let error as StoreError {
    // The detail may name paths and server messages, never secrets: none pass through here.
    log("\(error.description): \(error.detail)")
    exit(1)
} catch {
    log("\(error)")
    exit(1)
}
