import CLibWebSockets
import Foundation
import ParleyEncoding
import ParleyProtocol

/// One client of the load: its WebSocket connection (made again after a drop) and what
/// it does on it — `auth`, `subscribe`, then sending and/or receiving.
///
/// Belongs to one `BenchLoop`: only its service thread touches it, holding the loop's
/// state lock (the main thread reads it under the same lock). Not Sendable.
final class Peer {
    enum Phase: Equatable {
        /// Not connected; waiting in the loop's connect queue or for a retry.
        case idle
        case connecting
        case authenticating
        case subscribing
        case ready
        /// Gave up: too many failed attempts, or `auth`/`subscribe` was refused.
        case failed
        /// Closed at the end of the run.
        case finished

        /// Counted against the loop's limit of handshakes in progress.
        var isInProgress: Bool { self == .connecting || self == .authenticating || self == .subscribing }
    }

    /// A followed channel and what arrived on it.
    struct Subscription {
        let channel: Int
        /// The channel id's 36 ASCII bytes.
        let channelID: [UInt8]
        /// The highest seq seen (or the channel's `last_seq` when subscribing fresh).
        var lastSeq = 0
        /// Whether `lastSeq` is known: then a resubscribe asks for `after: lastSeq`.
        var hasBaseline = false
        /// Since the latest (re)subscribe: replay done (`event.synced`, or nothing to replay).
        var synced = false
        var syncedAt: UInt64 = 0
        /// First delivery of a message scheduled after this connection began, once synced.
        var liveAt: UInt64 = 0
    }

    /// A message sent and not yet answered.
    struct Pending {
        var sentAt: UInt64
        var channel: Int
    }

    /// An outgoing frame with lws headroom; `sentAt` is set for messages.
    struct Outgoing {
        var bytes: [UInt8]
        var sentAt: UInt64?
    }

    let plan: PeerPlan
    let index: Int

    var phase = Phase.idle {
        didSet {
            if oldValue.isInProgress != phase.isInProgress { owner?.inProgress += phase.isInProgress ? 1 : -1 }
        }
    }
    /// The state of the loop that adopted this peer (keeps its count of attempts in progress).
    weak var owner: LoopState?
    var wsi: OpaquePointer?
    var subscriptions: [Subscription]
    /// Connection attempts since the peer was last ready.
    var attempts = 0
    /// CLOCK_MONOTONIC ns: when the current connection attempt began; when first ready.
    var attemptStartedAt: UInt64 = 0
    var firstReadyAt: UInt64 = 0
    var retryAt: UInt64 = 0
    var lastError = ""

    // Connection state, reset for every new connection.
    var inbound: [UInt8] = []
    private var outgoing: [Outgoing] = []
    private var outgoingHead = 0
    var closeRequested = false
    /// Make a new connection when this one closes (a drop, not the end of the run).
    var reconnectWhenClosed = false
    var closeCode: UInt16?

    // Sending.
    private var builders: [MessageFrameBuilder] = []
    private var counter: UInt64 = 0
    private var pending: [UInt64: Pending] = [:]
    var sending = false
    private var nextSendAt: UInt64 = 0
    private var interval: UInt64 = 0

    // raw-fanout subscriber: the publisher's next counter.
    private var rawNext: UInt64 = 0

    init(plan: PeerPlan, index: Int, settings: RunSettings) {
        self.plan = plan
        self.index = index
        subscriptions = plan.subscriptions.map { Subscription(channel: $0.index, channelID: Array($0.id.utf8)) }
        if let sends = plan.sends {
            builders = sends.targets.map { target in
                MessageFrameBuilder(
                    headroom: BenchLoop.headroom, channelID: target.channel.id, keyID: target.keyID,
                    sender: sends.senderIndex, runTag: settings.runTag, payload: settings.payload)
            }
            interval = sends.rate > 0 ? UInt64(1e9 / sends.rate) : 0
        }
    }

    var isSender: Bool { plan.sends != nil }
    var unanswered: Int { pending.count }
    var hasOutgoing: Bool { outgoingHead < outgoing.count }

    // MARK: Connection events (service thread)

    /// The handshake completed: authenticate, or for raw peers, be ready at once.
    func established(_ loop: LoopState) {
        if plan.isRaw {
            becomeReady(loop)
            return
        }
        phase = .authenticating
        var writer = JSONWriter(appendingTo: [UInt8](repeating: 0, count: BenchLoop.headroom))
        writer.beginObject()
        writer.field("id", "a")
        writer.field("type", "auth")
        writer.field("session", plan.session ?? "")
        writer.endObject()
        enqueue(Outgoing(bytes: writer.bytes, sentAt: nil))
    }

    /// The socket is gone: forget this connection's state. Unanswered messages are
    /// counted as errors (their outcome is unknown).
    func connectionEnded(_ loop: LoopState) {
        wsi = nil
        inbound.removeAll()
        outgoing.removeAll()
        outgoingHead = 0
        closeRequested = false
        if !pending.isEmpty {
            loop.recorder.count(error: "no_answer_connection_closed", times: pending.count)
            pending.removeAll()
        }
        for index in subscriptions.indices {
            subscriptions[index].synced = false
            subscriptions[index].liveAt = 0
        }
    }

    private func becomeReady(_ loop: LoopState) {
        phase = .ready
        attempts = 0
        if firstReadyAt == 0 { firstReadyAt = Clock.now() }
        if sending { sendDue(loop, now: Clock.now()) }
    }

    // MARK: Frames from the server (service thread)

    func received(_ frame: UnsafeRawBufferPointer, _ loop: LoopState) {
        let now = Clock.now()
        if plan.isRaw {
            if plan.rawSubscriber { receivedRaw(frame, loop, now: now) }
            return
        }
        if FrameScanner.isEventMessage(frame), let delivery = FrameScanner.delivery(frame) {
            let channelID = UnsafeRawBufferPointer(rebasing: frame[delivery.channelIDOffset..<delivery.channelIDOffset + 36])
            delivered(channelID: channelID, seq: delivery.seq, header: delivery.header, loop, now: now)
            return
        }
        if FrameScanner.isAck(frame), let ack = FrameScanner.ack(frame) {
            acknowledged(counter: ack.counter, seq: ack.seq, duplicate: ack.duplicate, loop, now: now)
            return
        }
        receivedOther(Array(frame), loop, now: now)
    }

    /// Everything off the measured path, through the full parser.
    private func receivedOther(_ bytes: [UInt8], _ loop: LoopState, now: UInt64) {
        let frame: ServerFrame
        do {
            frame = try ServerFrame.decode(bytes)
        } catch {
            loop.recorder.count(error: "unreadable_frame")
            return
        }
        switch frame {
        case .error(let error):
            failed(re: error.re, code: error.code.rawValue, loop)
        case .result(_, .auth):
            guard phase == .authenticating else { return }
            if subscriptions.isEmpty {
                becomeReady(loop)
            } else {
                subscribe()
            }
        case .result(_, .subscribe(let result)):
            guard phase == .subscribing else { return }
            subscribed(result, loop, now: now)
        case .result(let re, .message(let result)):
            if re.hasPrefix("m"), let counter = UInt64(re.dropFirst()) {
                acknowledged(counter: counter, seq: result.seq, duplicate: result.duplicate, loop, now: now)
            }
        case .event(.message(let record)):
            let header = record.ciphertext.count >= BenchPayload.headerBytes
                ? Array(record.ciphertext.prefix(BenchPayload.headerBytes)) : []
            var base64: [UInt8] = []
            Base64Bytes.appendEncoded(header, to: &base64)
            let decoded = base64.withUnsafeBytes { BenchPayload.decodeHeader($0) }
            var channelID = Array(record.channelID.string.utf8)
            channelID.withUnsafeMutableBytes { id in
                if let decoded {
                    delivered(channelID: UnsafeRawBufferPointer(id), seq: record.seq, header: decoded, loop, now: now)
                } else {
                    loop.recorder.foreign += 1
                }
            }
        case .event(.synced(let synced)):
            if let index = subscriptions.firstIndex(where: { $0.channelID.elementsEqual(synced.channelID.string.utf8) }) {
                subscriptions[index].synced = true
                subscriptions[index].syncedAt = now
                if synced.seq > subscriptions[index].lastSeq {
                    // Nothing replayed up to a later cut (a join): nothing was missed.
                    subscriptions[index].lastSeq = synced.seq
                }
            }
        default:
            break   // event.key, event.member, other results: not part of the load
        }
    }

    private func subscribe() {
        phase = .subscribing
        var writer = JSONWriter(appendingTo: [UInt8](repeating: 0, count: BenchLoop.headroom))
        writer.beginObject()
        writer.field("id", "s")
        writer.field("type", "subscribe")
        writer.key("channels")
        writer.beginArray()
        for subscription in subscriptions {
            writer.beginObject()
            writer.field("channel_id", String(decoding: subscription.channelID, as: UTF8.self))
            if subscription.hasBaseline { writer.field("after", subscription.lastSeq) }
            writer.endObject()
        }
        writer.endArray()
        writer.endObject()
        enqueue(Outgoing(bytes: writer.bytes, sentAt: nil))
    }

    private func subscribed(_ result: Response.Subscribe, _ loop: LoopState, now: UInt64) {
        for channel in result.channels {
            guard let index = subscriptions.firstIndex(where: { $0.channelID.elementsEqual(channel.channelID.string.utf8) }) else { continue }
            if !subscriptions[index].hasBaseline {
                // Fresh: live messages only, from last_seq + 1.
                subscriptions[index].lastSeq = channel.lastSeq
                subscriptions[index].hasBaseline = true
                subscriptions[index].synced = true
                subscriptions[index].syncedAt = now
            } else if !channel.recovered {
                // More than 1000 missed: nothing replayed; the gap stays a gap.
                loop.recorder.count(error: "not_recovered")
                loop.recorder.gaps += max(0, channel.lastSeq - subscriptions[index].lastSeq)
                subscriptions[index].lastSeq = channel.lastSeq
                subscriptions[index].synced = true
                subscriptions[index].syncedAt = now
            }
        }
        becomeReady(loop)
    }

    private func failed(re: String?, code: String, _ loop: LoopState) {
        switch re {
        case let re? where re.hasPrefix("m"):
            loop.recorder.count(error: code)
            if let counter = UInt64(re.dropFirst()), pending.removeValue(forKey: counter) != nil, sending, interval == 0 {
                fillWindow(loop, now: Clock.now())
            }
        case "a", "s":
            loop.recorder.count(error: (re == "a" ? "auth:" : "subscribe:") + code)
            lastError = "\(re == "a" ? "auth" : "subscribe") refused: \(code)"
            phase = .failed
            requestClose(reconnect: false)
        default:
            loop.recorder.count(error: code)
        }
    }

    private func delivered(channelID: UnsafeRawBufferPointer, seq: Int, header: BenchPayload.Header,
                           _ loop: LoopState, now: UInt64) {
        guard let index = subscriptions.firstIndex(where: { $0.channelID.elementsEqual(channelID) }) else {
            loop.recorder.count(error: "delivery_for_unknown_channel")
            return
        }
        let last = subscriptions[index].lastSeq
        if seq <= last {
            loop.recorder.duplicates += 1
            return
        }
        if seq > last + 1 { loop.recorder.gaps += seq - last - 1 }
        subscriptions[index].lastSeq = seq
        guard header.runTag == loop.settings.runTag else {
            loop.recorder.foreign += 1
            return
        }
        loop.recorder.recordDelivery(sentAt: header.sentAt, now: now)
        if subscriptions[index].synced, subscriptions[index].liveAt == 0, header.sentAt >= attemptStartedAt {
            subscriptions[index].liveAt = now
        }
    }

    private func receivedRaw(_ frame: UnsafeRawBufferPointer, _ loop: LoopState, now: UInt64) {
        guard let header = BenchPayload.decodeHeader(frame), header.runTag == loop.settings.runTag else {
            loop.recorder.foreign += 1
            return
        }
        if header.counter < rawNext {
            loop.recorder.duplicates += 1
            return
        }
        loop.recorder.gaps += Int(header.counter - rawNext)
        rawNext = header.counter + 1
        loop.recorder.recordDelivery(sentAt: header.sentAt, now: now)
    }

    /// The highest counter a raw subscriber has seen, plus one.
    var rawReceived: UInt64 { rawNext }

    private func acknowledged(counter: UInt64, seq: Int, duplicate: Bool, _ loop: LoopState, now: UInt64) {
        guard let sent = pending.removeValue(forKey: counter) else {
            loop.recorder.count(error: "unexpected_ack")
            return
        }
        loop.recorder.recordAck(sentAt: sent.sentAt, now: now, channel: sent.channel, seq: seq, duplicate: duplicate)
        if sending, interval == 0 { fillWindow(loop, now: now) }
    }

    // MARK: Sending (service thread)

    /// Starts the schedule: open loop from `start`, closed loop at once.
    func startSending(at start: UInt64, _ loop: LoopState) {
        guard let sends = plan.sends else { return }
        sending = true
        nextSendAt = start + UInt64(sends.phase * Double(interval))
        if phase == .ready { sendDue(loop, now: Clock.now()) }
    }

    func stopSending() {
        sending = false
    }

    /// Open loop: queues every message scheduled up to `now` and tells the loop when the
    /// next one is due. Closed loop: fills the window.
    func sendDue(_ loop: LoopState, now: UInt64) {
        guard sending, phase == .ready, wsi != nil else { return }
        if interval == 0 {
            fillWindow(loop, now: now)
            return
        }
        while nextSendAt <= now {
            queueMessage(sentAt: nextSendAt, loop)
            nextSendAt += interval
        }
        loop.nextSendAt = min(loop.nextSendAt, nextSendAt)
    }

    private func fillWindow(_ loop: LoopState, now: UInt64) {
        guard let sends = plan.sends, phase == .ready else { return }
        while pending.count < sends.inflight { queueMessage(sentAt: now, loop) }
    }

    private func queueMessage(sentAt: UInt64, _ loop: LoopState) {
        guard let sends = plan.sends else { return }
        let number = counter
        counter += 1
        if plan.isRaw {
            let header = BenchPayload.Header(runTag: loop.settings.runTag, sender: sends.senderIndex, counter: number, sentAt: sentAt)
            enqueue(Outgoing(bytes: rawFrame(headroom: BenchLoop.headroom, header: header, payload: loop.settings.payload),
                             sentAt: sentAt))
            return
        }
        let target = Int(number % UInt64(builders.count))
        pending[number] = Pending(sentAt: sentAt, channel: sends.targets[target].channel.index)
        enqueue(Outgoing(bytes: builders[target].frame(counter: number, sentAt: sentAt, ts: Clock.unixSeconds()),
                         sentAt: sentAt))
    }

    /// Raw publisher: messages sent so far (its subscribers should see all of them).
    var messagesQueued: UInt64 { counter }

    // MARK: Writing (service thread)

    func enqueue(_ frame: Outgoing) {
        outgoing.append(frame)
        if let wsi { lws_callback_on_writable(wsi) }
    }

    /// Closes the connection at the next chance to write; with `reconnect`, a new
    /// connection follows and resumes every subscription after its last seq.
    func requestClose(reconnect: Bool) {
        closeRequested = true
        reconnectWhenClosed = reconnect
        if let wsi { lws_callback_on_writable(wsi) }
    }

    /// Writes one queued frame (one `lws_write` per WRITEABLE). Returns false when the
    /// connection is to close.
    func writeNext(_ wsi: OpaquePointer, _ loop: LoopState) -> Bool {
        if closeRequested { return false }
        guard outgoingHead < outgoing.count else { return true }
        var frame = outgoing[outgoingHead]
        outgoing[outgoingHead].bytes = []
        outgoingHead += 1
        if outgoingHead > 1024, outgoingHead * 2 > outgoing.count {
            outgoing.removeFirst(outgoingHead)
            outgoingHead = 0
        }
        let headroom = BenchLoop.headroom
        let payloadCount = frame.bytes.count - headroom
        let written = frame.bytes.withUnsafeMutableBufferPointer { buffer -> Int32 in
            lws_write(wsi, buffer.baseAddress! + headroom, payloadCount, LWS_WRITE_TEXT)
        }
        if written < Int32(payloadCount) {
            lastError = "write failed"
            return false
        }
        if let sentAt = frame.sentAt {
            loop.recorder.sent += 1
            if sentAt >= loop.recorder.measureFrom { loop.recorder.measuredSent += 1 }
        }
        if hasOutgoing { lws_callback_on_writable(wsi) }
        return true
    }
}
