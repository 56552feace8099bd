import Foundation
import ParleyProtocol

/// Structured logs: one line per event on standard error, as logfmt (`text`) or as one
/// JSON object per line (`json`). Every line has `time`, `level`, `event` (a stable dotted
/// name to alert on) and `msg` (for people), then the event's own fields.
///
/// Secrets never pass through here: callers log ids, addresses, codes and counts — never a
/// passkey, session token, challenge answer, private key, ciphertext or PostgreSQL's own
/// error detail (it can quote row values; `StoreError.description` is the safe form).
/// `Tests/EndToEnd/test_logs.py` runs a whole session at `debug` and looks for each secret.
///
/// Events a remote peer can cause (refused handshakes, failed logins, policy closes) are
/// throttled per event to `burstPerSecond` lines a second; the next line that gets through
/// carries `suppressed=N`, so a flood costs neither the disk nor the service thread.
public final class Log: @unchecked Sendable {
    public enum Format: String, Sendable {
        case text, json
    }

    public typealias Level = RelayConfiguration.LogLevel

    public let level: Level
    public let format: Format
    let burstPerSecond: Int
    private let write: @Sendable (String) -> Void
    /// The current second for throttling (a parameter so tests can step it).
    private let second: @Sendable () -> Int

    private let lock = NSLock()
    private var windows: [String: (second: Int, lines: Int, suppressed: Int)] = [:]   // guarded by lock

    /// `write` receives each finished line, newline included (standard error by default).
    public init(level: Level, format: Format = .text, burstPerSecond: Int = 10,
                write: @escaping @Sendable (String) -> Void = Log.standardError,
                second: @escaping @Sendable () -> Int = { Int(Date().timeIntervalSince1970) }) {
        self.level = level
        self.format = format
        self.burstPerSecond = burstPerSecond
        self.write = write
        self.second = second
    }

    /// Whether a line at this level would be written: check it before building costly fields.
    @inline(__always)
    public func enabled(_ level: Level) -> Bool { level <= self.level }

    public func error(_ event: String, _ message: String, _ fields: KeyValuePairs<String, Value> = [:]) {
        emit(.error, event, message, fields, throttled: false)
    }

    public func warn(_ event: String, _ message: String, _ fields: KeyValuePairs<String, Value> = [:]) {
        emit(.warn, event, message, fields, throttled: false)
    }

    public func info(_ event: String, _ message: String, _ fields: KeyValuePairs<String, Value> = [:]) {
        emit(.info, event, message, fields, throttled: false)
    }

    public func debug(_ event: String, _ message: String, _ fields: KeyValuePairs<String, Value> = [:]) {
        emit(.debug, event, message, fields, throttled: false)
    }

    /// A line about something a peer can repeat at will: at most `burstPerSecond` a second.
    public func throttled(_ level: Level, _ event: String, _ message: String,
                          _ fields: KeyValuePairs<String, Value> = [:]) {
        emit(level, event, message, fields, throttled: true)
    }

    private func emit(_ level: Level, _ event: String, _ message: String,
                      _ fields: KeyValuePairs<String, Value>, throttled: Bool) {
        guard enabled(level) else { return }
        var suppressed = 0
        if throttled {
            let second = self.second()
            let admitted: Bool = lock.withLock {
                var window = windows[event] ?? (second, 0, 0)
                if window.second != second { window = (second, 0, window.suppressed) }
                let admit = window.lines < burstPerSecond
                if admit {
                    window.lines += 1
                    suppressed = window.suppressed
                    window.suppressed = 0
                } else {
                    window.suppressed += 1
                }
                windows[event] = window
                return admit
            }
            guard admitted else { return }
        }
        var all: [(String, Value)] = [("time", .string(Self.timestamp())), ("level", .string(level.rawValue)),
                                      ("event", .string(event)), ("msg", .string(message))]
        all += fields.map { ($0.key, $0.value) }
        if suppressed > 0 { all.append(("suppressed", .int(suppressed))) }
        write(format == .json ? Self.json(all) : Self.logfmt(all))
    }

    /// A field's value: logs carry only these shapes.
    public enum Value: Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
        case string(String)
        case int(Int)
        case double(Double)
        case bool(Bool)

        public init(stringLiteral value: String) { self = .string(value) }
        public init(integerLiteral value: Int) { self = .int(value) }

        var json: JSONValue {
            switch self {
            case .string(let text): return .string(text)
            case .int(let number): return .integer(Int64(number))
            case .double(let number): return .number(number)
            case .bool(let flag): return .bool(flag)
            }
        }

        var text: String {
            switch self {
            case .string(let text): return text
            case .int(let number): return String(number)
            case .double(let number): return String(format: "%.3f", number)
            case .bool(let flag): return flag ? "true" : "false"
            }
        }
    }

    static func json(_ fields: [(String, Value)]) -> String {
        let object = JSONObject(fields.map { ($0.0, $0.1.json) })
        return String(decoding: JSONValue.object(object).encoded(), as: UTF8.self) + "\n"
    }

    /// logfmt: `key=value`, quoted (with `\"`, `\\`, `\n` escapes) when the value has a
    /// space, a quote, an equals sign or a control character; control characters from peers
    /// (an Origin header, say) can never start a new line.
    static func logfmt(_ fields: [(String, Value)]) -> String {
        var line = ""
        for (index, (key, value)) in fields.enumerated() {
            if index > 0 { line += " " }
            line += key + "=" + quoted(value.text)
        }
        return line + "\n"
    }

    private static func quoted(_ text: String) -> String {
        let plain = !text.isEmpty && text.unicodeScalars.allSatisfy {
            $0.value > 0x20 && $0.value != 0x7F && $0 != "\"" && $0 != "=" && $0 != "\\"
        }
        if plain { return text }
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                      Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec),
                      Int(now.tv_nsec / 1_000_000))
    }

    /// One `write(2)` per line, so lines from different threads never interleave.
    public static let standardError: @Sendable (String) -> Void = { line in
        var bytes = Array(line.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { Foundation.write(2, $0.baseAddress! + offset, $0.count - offset) }
            if written <= 0 {
                if written < 0 && errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}
