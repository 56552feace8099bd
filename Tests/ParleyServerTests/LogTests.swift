@testable import ParleyServer
import ParleyProtocol
import ParleyTestSupport
import XCTest

/// Structured log lines: one per event, parseable in both formats, throttled where peers
/// can flood them. The lines are captured through the `write` hook, not from stderr.
final class LogTests: XCTestCase {
    private func capture(_ format: Log.Format, level: Log.Level = .debug, burst: Int = 10,
                         clock: Locked<Int> = Locked(0)) -> (Log, Locked<[String]>) {
        let lines = Locked<[String]>([])
        let log = Log(level: level, format: format, burstPerSecond: burst,
                      write: { line in lines.withLock { $0.append(line) } },
                      second: { clock.withLock { $0 } })
        return (log, lines)
    }

    func testJSONLinesCarryTheCommonFieldsThenTheEventsOwn() throws {
        let (log, lines) = capture(.json)
        log.warn("connection.refused", "refused \"quoted\"\nline", ["addr": "10.0.0.1", "status": 429, "ok": .bool(false)])
        let all = lines.withLock { $0 }
        XCTAssertEqual(all.count, 1)
        XCTAssertTrue(all[0].hasSuffix("\n"))
        XCTAssertEqual(all[0].filter { $0 == "\n" }.count, 1, "an escaped newline cannot split the line")
        guard case .object(let object) = try JSONParser.parse(Array(all[0].dropLast().utf8)) else {
            return XCTFail("not an object: \(all[0])")
        }
        XCTAssertEqual(object.keys, ["time", "level", "event", "msg", "addr", "status", "ok"])
        XCTAssertEqual(object["level"], .string("warn"))
        XCTAssertEqual(object["event"], .string("connection.refused"))
        XCTAssertEqual(object["msg"], .string("refused \"quoted\"\nline"))
        XCTAssertEqual(object["status"], .integer(429))
        XCTAssertEqual(object["ok"], .bool(false))
        guard case .string(let time) = object["time"] else { return XCTFail("no time") }
        XCTAssertNotNil(time.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression), time)
    }

    func testLogfmtQuotesWhatWouldBreakTheLine() {
        let (log, lines) = capture(.text)
        log.info("relay.listening", "relay listening", ["url": "ws://127.0.0.1:1/ws", "origin": "evil\r\nlevel=error x=\"y\"",
                                                        "empty": ""])
        let line = lines.withLock { $0[0] }
        XCTAssertTrue(line.contains(" level=info event=relay.listening msg=\"relay listening\" url=ws://127.0.0.1:1/ws "), line)
        XCTAssertTrue(line.contains(#"origin="evil\r\nlevel=error x=\"y\"""#), line)
        XCTAssertTrue(line.hasSuffix(" empty=\"\"\n"), line)
        XCTAssertEqual(line.filter { $0 == "\n" || $0 == "\r" }.count, 1)
    }

    func testLevelsBelowTheSettingAreDropped() {
        let (log, lines) = capture(.text, level: .warn)
        log.debug("a", "a")
        log.info("b", "b")
        log.warn("c", "c")
        log.error("d", "d")
        XCTAssertFalse(log.enabled(.info))
        XCTAssertEqual(lines.withLock { $0.map { $0.contains("event=c") || $0.contains("event=d") } }, [true, true])
    }

    func testThrottledEventsSayHowManyWereSuppressed() throws {
        let clock = Locked(1_000)
        let (log, lines) = capture(.json, burst: 3, clock: clock)
        for _ in 0..<50 { log.throttled(.warn, "connection.refused", "refused") }
        log.throttled(.warn, "auth.failed", "another event has its own budget")
        XCTAssertEqual(lines.withLock { $0.count }, 4, "three refusals and the other event")
        // The next second lets lines through again; the first one counts what was dropped.
        clock.withLock { $0 += 1 }
        log.throttled(.warn, "connection.refused", "refused")
        let last = try XCTUnwrap(lines.withLock { $0.last })
        guard case .object(let object) = try JSONParser.parse(Array(last.dropLast().utf8)) else { return XCTFail(last) }
        XCTAssertEqual(object["suppressed"], .integer(47))
    }
}
