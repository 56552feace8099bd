import Foundation
import ParleyProtocol

/// Everything a run measured, as a table for people and as JSON for scripts.
struct Report {
    struct CPU {
        var relay: Double?
        /// Each relay node's share of `relay`, in the order of `--relay-pid`.
        var relayEach: [Double] = []
        var postgres: Double?
        var bench: Double
        /// The wall-clock seconds the CPU times were taken over.
        var seconds: Double
    }

    struct Reconnect {
        /// From the drop until every subscription had its `event.synced` (replay done).
        var syncedSeconds: Double?
        /// From the drop until every subscription had a live message sent after it came back.
        var caughtUpSeconds: Double?
    }

    var scenario: Scenario
    var parameters: [(String, String)] = []
    /// The measured window (after any warm-up) and the drain that followed.
    var measuredSeconds = 0.0
    var drainSeconds = 0.0
    var recorder = Recorder()
    /// Deliveries still missing when the drain gave up; answers never received.
    var lost = 0
    var unanswered = 0
    var connectionsRequested = 0
    var connectionsHeld = 0
    var connectSeconds: Double?
    var relayPIDs: [Int32] = []
    var postgresPIDs: [Int32] = []
    var relayRSSBefore: Int?
    var relayRSSAfter: Int?
    var cpu: CPU?
    var reconnect: Reconnect?
    var notes: [String] = []
    var setupFailure: String?

    /// Gaps, duplicates or loss; for `connections`, fewer connections held than asked for.
    var failed: Bool {
        setupFailure != nil || recorder.gaps > 0 || recorder.duplicates > 0 || lost > 0
            || (scenario == .connections && connectionsHeld < connectionsRequested)
    }

    var rssPerConnection: Double? {
        guard let before = relayRSSBefore, let after = relayRSSAfter, connectionsHeld > 0 else { return nil }
        return Double(after - before) / Double(connectionsHeld)
    }

    /// Rates over the measured window, or up to the last answer when that came later.
    private func rate(_ count: Int, lastAt: UInt64) -> Double {
        let window = max(measuredSeconds, lastAt > recorder.measureFrom ? Double(lastAt - recorder.measureFrom) / 1e9 : 0)
        return window > 0 ? Double(count) / window : 0
    }

    var sendsPerSecond: Double { measuredSeconds > 0 ? Double(recorder.measuredSent) / measuredSeconds : 0 }
    var acksPerSecond: Double { rate(recorder.acks, lastAt: recorder.lastAck) }
    var deliveriesPerSecond: Double { rate(recorder.deliveries, lastAt: recorder.lastDelivery) }

    static let percentiles: [(String, Double)] = [("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)]

    private static func milliseconds(_ micros: UInt64) -> Double { Double(micros) / 1000 }

    // MARK: Table

    func table() -> String {
        var lines: [String] = []
        func line(_ name: String, _ value: String) { lines.append(name.padding(toLength: 26, withPad: " ", startingAt: 0) + value) }
        lines.append("parley-bench \(scenario.rawValue)")
        line("parameters", parameters.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
        if let setupFailure { line("SETUP FAILED", setupFailure) }
        line("connections", "\(connectionsHeld) held of \(connectionsRequested)"
             + (connectSeconds.map { String(format: ", all ready in %.2f s", $0) } ?? ""))
        if measuredSeconds > 0 {
            line("measured", String(format: "%.1f s (+ %.2f s drain)", measuredSeconds, drainSeconds))
            line("sent", String(format: "%d  (%.0f/s)", recorder.measuredSent, sendsPerSecond))
            if scenario != .rawFanout {
                line("acks", String(format: "%d  (%.0f/s)", recorder.acks, acksPerSecond))
            }
            line("deliveries", String(format: "%d  (%.0f/s)", recorder.deliveries, deliveriesPerSecond))
            lines.append("")
            lines.append("latency ms".padding(toLength: 26, withPad: " ", startingAt: 0)
                         + (Self.percentiles.map(\.0) + ["max"]).map { $0.padding(toLength: 10, withPad: " ", startingAt: 0) }.joined())
            if scenario != .rawFanout { lines.append(latencyRow("publish → ack", recorder.ackLatency)) }
            lines.append(latencyRow("publish → deliver", recorder.deliverLatency))
            lines.append("")
        }
        if let reconnect {
            line("all synced after", reconnect.syncedSeconds.map { String(format: "%.3f s", $0) } ?? "timed out")
            line("all caught up after", reconnect.caughtUpSeconds.map { String(format: "%.3f s", $0) } ?? "timed out")
        }
        line("gaps / duplicates / lost", "\(recorder.gaps) / \(recorder.duplicates) / \(lost)")
        if unanswered > 0 { line("unanswered", "\(unanswered)") }
        if recorder.duplicateAcks > 0 { line("duplicate acks", "\(recorder.duplicateAcks)") }
        if recorder.foreign > 0 { line("foreign frames", "\(recorder.foreign)") }
        line("errors", recorder.errors.isEmpty ? "none" : recorder.errors.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        if !recorder.closes.isEmpty {
            line("closes", recorder.closes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        }
        if let relayRSSAfter {
            line("relay RSS", String(format: "%.1f MiB before, %.1f MiB after", Double(relayRSSBefore ?? 0) / 1_048_576,
                                     Double(relayRSSAfter) / 1_048_576)
                 + (rssPerConnection.map { String(format: ", %.1f KiB per connection", $0 / 1024) } ?? ""))
        }
        if let cpu {
            var parts: [String] = []
            if let relay = cpu.relay {
                var text = String(format: "relay %.2f", relay)
                if cpu.relayEach.count > 1 {
                    text += " (" + cpu.relayEach.map { String(format: "%.2f", $0) }.joined(separator: " + ") + ")"
                }
                parts.append(text)
            }
            if let postgres = cpu.postgres { parts.append(String(format: "postgres %.2f", postgres)) }
            parts.append(String(format: "bench %.2f", cpu.bench))
            line("CPU seconds", parts.joined(separator: ", ") + String(format: " (over %.1f s)", cpu.seconds))
        }
        for note in notes { line("note", note) }
        return lines.joined(separator: "\n")
    }

    private func latencyRow(_ name: String, _ histogram: LatencyHistogram) -> String {
        guard histogram.totalCount > 0 else { return name.padding(toLength: 26, withPad: " ", startingAt: 0) + "no samples" }
        let values = Self.percentiles.map { histogram.valueAtPercentile($0.1) } + [histogram.max]
        return name.padding(toLength: 26, withPad: " ", startingAt: 0)
            + values.map { String(format: "%-10.3f", Self.milliseconds($0)) }.joined()
    }

    // MARK: JSON

    func json() -> [UInt8] {
        var writer = JSONWriter(capacity: 4096)
        writer.beginObject()
        writer.field("scenario", scenario.rawValue)
        writer.key("parameters")
        writer.beginObject()
        for (name, value) in parameters {
            writer.key(name)
            if let integer = Int(value) {
                writer.value(integer)
            } else if let number = Double(value) {
                writer.value(number)
            } else {
                writer.value(value)
            }
        }
        writer.endObject()
        writer.field("ok", !failed)
        if let setupFailure { writer.field("setup_failure", setupFailure) }
        writer.key("duration_s"); writer.value(measuredSeconds)
        writer.key("drain_s"); writer.value(drainSeconds)
        writer.field("sends", recorder.measuredSent)
        writer.field("acks", recorder.acks)
        writer.field("deliveries", recorder.deliveries)
        writer.key("sends_per_s"); writer.value(sendsPerSecond)
        writer.key("acks_per_s"); writer.value(acksPerSecond)
        writer.key("deliveries_per_s"); writer.value(deliveriesPerSecond)
        writer.key("ack_latency_ms"); writeLatency(recorder.ackLatency, into: &writer)
        writer.key("deliver_latency_ms"); writeLatency(recorder.deliverLatency, into: &writer)
        writer.field("gaps", recorder.gaps)
        writer.field("duplicates", recorder.duplicates)
        writer.field("lost", lost)
        writer.field("unanswered", unanswered)
        writer.field("duplicate_acks", recorder.duplicateAcks)
        writer.field("foreign_frames", recorder.foreign)
        writer.key("errors"); writeCounts(recorder.errors, into: &writer)
        writer.key("closes"); writeCounts(recorder.closes, into: &writer)
        writer.key("connections")
        writer.beginObject()
        writer.field("requested", connectionsRequested)
        writer.field("held", connectionsHeld)
        writer.key("connect_s"); optional(connectSeconds, into: &writer)
        writer.endObject()
        writer.key("relay")
        writer.beginObject()
        writer.key("pid"); optional(relayPIDs.first.map { Double($0) }, into: &writer)
        writer.key("pids")
        writer.beginArray()
        for pid in relayPIDs { writer.value(Int(pid)) }
        writer.endArray()
        writer.key("rss_before_bytes"); optional(relayRSSBefore.map(Double.init), into: &writer)
        writer.key("rss_after_bytes"); optional(relayRSSAfter.map(Double.init), into: &writer)
        writer.key("rss_per_connection_bytes"); optional(rssPerConnection, into: &writer)
        writer.key("cpu_s"); optional(cpu?.relay, into: &writer)
        writer.key("cpu_s_each")
        writer.beginArray()
        for seconds in cpu?.relayEach ?? [] { writer.value(seconds) }
        writer.endArray()
        writer.endObject()
        writer.key("postgres")
        writer.beginObject()
        writer.key("pids")
        writer.beginArray()
        for pid in postgresPIDs { writer.value(Int(pid)) }
        writer.endArray()
        writer.key("cpu_s"); optional(cpu?.postgres, into: &writer)
        writer.endObject()
        writer.key("bench")
        writer.beginObject()
        writer.key("cpu_s"); optional(cpu?.bench, into: &writer)
        writer.endObject()
        writer.key("cpu_window_s"); optional(cpu?.seconds, into: &writer)
        if let reconnect {
            writer.key("reconnect")
            writer.beginObject()
            writer.key("synced_s"); optional(reconnect.syncedSeconds, into: &writer)
            writer.key("caught_up_s"); optional(reconnect.caughtUpSeconds, into: &writer)
            writer.endObject()
        }
        writer.key("notes")
        writer.beginArray()
        for note in notes { writer.value(note) }
        writer.endArray()
        writer.endObject()
        writer.bytes.append(0x0A)
        return writer.bytes
    }

    private func writeLatency(_ histogram: LatencyHistogram, into writer: inout JSONWriter) {
        writer.beginObject()
        writer.field("count", Int(histogram.totalCount))
        for (name, percentile) in Self.percentiles {
            writer.key(name)
            if histogram.totalCount > 0 { writer.value(Self.milliseconds(histogram.valueAtPercentile(percentile))) } else { writer.null() }
        }
        writer.key("max")
        if histogram.totalCount > 0 { writer.value(Self.milliseconds(histogram.max)) } else { writer.null() }
        writer.endObject()
    }

    private func writeCounts(_ counts: [String: Int], into writer: inout JSONWriter) {
        writer.beginObject()
        for (key, value) in counts.sorted(by: { $0.key < $1.key }) {
            writer.key(key)
            writer.value(value)
        }
        writer.endObject()
    }

    private func optional(_ value: Double?, into writer: inout JSONWriter) {
        if let value { writer.value(value) } else { writer.null() }
    }
}
