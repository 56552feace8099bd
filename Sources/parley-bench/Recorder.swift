import Histogram

/// Latencies in microseconds, from 1 µs to an hour, 3 significant digits.
typealias LatencyHistogram = Histogram<UInt64>

func makeLatencyHistogram() -> LatencyHistogram {
    LatencyHistogram(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
}

/// What one service thread measured. Lives inside its `BenchLoop`'s state, under its lock;
/// the main thread merges all of them into one at the end.
struct Recorder: Sendable {
    /// Samples whose scheduled send time is before this (warm-up) are not recorded.
    var measureFrom: UInt64 = 0

    var ackLatency = makeLatencyHistogram()
    var deliverLatency = makeLatencyHistogram()

    /// Messages written to a socket (all, and those scheduled after the warm-up).
    var sent = 0
    var measuredSent = 0
    var acks = 0
    var duplicateAcks = 0
    var deliveries = 0
    var errors: [String: Int] = [:]
    var closes: [String: Int] = [:]
    /// Messages missing between two deliveries of a subscription, and seqs delivered twice.
    var gaps = 0
    var duplicates = 0
    /// Frames whose payload was not ours (another run's, or unreadable).
    var foreign = 0

    /// Highest acknowledged seq per channel index.
    var ackedSeq: [Int: Int] = [:]
    /// CLOCK_MONOTONIC ns of the last ack and the last delivery.
    var lastAck: UInt64 = 0
    var lastDelivery: UInt64 = 0

    mutating func recordAck(sentAt: UInt64, now: UInt64, channel: Int, seq: Int, duplicate: Bool) {
        if duplicate { duplicateAcks += 1 }
        if seq > ackedSeq[channel, default: 0] { ackedSeq[channel] = seq }
        guard sentAt >= measureFrom else { return }
        acks += 1
        lastAck = now
        record(&ackLatency, now &- sentAt)
    }

    mutating func recordDelivery(sentAt: UInt64, now: UInt64) {
        guard sentAt >= measureFrom else { return }
        deliveries += 1
        lastDelivery = now
        record(&deliverLatency, now &- sentAt)
    }

    mutating func count(error code: String, times: Int = 1) { errors[code, default: 0] += times }

    mutating func count(close code: String) { closes[code, default: 0] += 1 }

    private func record(_ histogram: inout LatencyHistogram, _ nanoseconds: UInt64) {
        let micros = min(max(nanoseconds / 1000, 1), histogram.highestTrackableValue)
        _ = histogram.record(micros)
    }

    /// Adds another thread's numbers to these.
    mutating func merge(_ other: Recorder) {
        measureFrom = max(measureFrom, other.measureFrom)
        ackLatency.add(other.ackLatency)
        deliverLatency.add(other.deliverLatency)
        sent += other.sent
        measuredSent += other.measuredSent
        acks += other.acks
        duplicateAcks += other.duplicateAcks
        deliveries += other.deliveries
        errors.merge(other.errors, uniquingKeysWith: +)
        closes.merge(other.closes, uniquingKeysWith: +)
        gaps += other.gaps
        duplicates += other.duplicates
        foreign += other.foreign
        ackedSeq.merge(other.ackedSeq, uniquingKeysWith: max)
        lastAck = max(lastAck, other.lastAck)
        lastDelivery = max(lastDelivery, other.lastDelivery)
    }
}
