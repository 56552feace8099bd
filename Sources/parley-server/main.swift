// parley-server: configuration and wiring only. The relay itself lives in ParleyServer.
import Foundation
import ParleyStore

let usage = """
    usage: parley-server [serve|migrate|help] [options]

    commands:
      serve      run the relay (the default)
      migrate    apply the database migrations and exit; a second run changes nothing

    options (each also read from the environment variable named after it):
      --database-url URL    PostgreSQL to use (PARLEY_DATABASE_URL); default: an embedded
                            cluster in the data directory
      --data-dir DIR        data directory of the embedded cluster (PARLEY_DATA_DIR, default .parley)
      --migrations DIR      migrations folder (PARLEY_MIGRATIONS_DIR, default: ./migrations)

    """

/// Command-line options win over the environment, which wins over the defaults.
struct Options {
    var command = "serve"
    var database = DatabaseConfiguration()

    init(arguments: [String], environment: [String: String]) throws {
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
            case "--database-url": database.url = try next()
            case "--data-dir": database.dataDirectory = URL(fileURLWithPath: try next())
            case "--migrations": database.migrationsDirectory = URL(fileURLWithPath: try next())
            case "-h", "--help": command = "help"
            default: throw UsageError("unknown option \(name)")
            }
        }
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

do {
    let options = try Options(arguments: Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment)
    switch options.command {
    case "migrate":
        try runMigrate(options)
    case "help":
        print(usage, terminator: "")
    case "serve":
        log("the relay is not built yet (it arrives with its issue); `parley-server migrate` works")
        exit(69)
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
