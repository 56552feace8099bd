import Foundation

/// Drives the loops through a run from the main thread: open the connections, start and
/// stop the senders, drop the subscribers, wait for the drain, and read what happened.
final class Runner {
    /// What all loops say at one moment.
    struct Snapshot {
        var peers = 0
        var ready = 0
        var failed = 0
        var open = 0
        var sent = 0
        var acks = 0
        var deliveries = 0
        var errors = 0
        /// Messages sent and not answered yet.
        var unanswered = 0
        /// Highest acked seq per channel.
        var ackedSeq: [Int: Int] = [:]
        /// raw-fanout: messages the publisher queued.
        var rawPublished: UInt64 = 0
        /// The time by which every ready subscriber had been ready (CLOCK_MONOTONIC ns).
        var lastFirstReady: UInt64 = 0
        var firstErrors: [String] = []
    }

    let options: BenchOptions
    let loops: [BenchLoop]
    private var peerCount = 0
    private let log: (String) -> Void

    init(options: BenchOptions, settings: RunSettings, log: @escaping (String) -> Void) throws {
        self.options = options
        self.log = log
        let secure = [options.url, options.pubURL, options.subURL, options.subscriberURL].contains { $0?.scheme == "wss" }
        loops = try (0..<options.threads).map { try BenchLoop(index: $0, settings: settings, secure: secure) }
    }

    /// Adopts the plans, round robin over the loops, and starts connecting.
    func open(_ plans: [PeerPlan], settings: RunSettings) {
        var batches = Array(repeating: [Peer](), count: loops.count)
        for (index, plan) in plans.enumerated() {
            let loop = index % loops.count
            batches[loop].append(Peer(plan: plan, index: batches[loop].count, settings: settings))
        }
        peerCount += plans.count
        for (loop, batch) in zip(loops, batches) { loop.post(.open(batch)) }
    }

    func snapshot() -> Snapshot {
        var snapshot = Snapshot()
        for loop in loops {
            loop.inspect { state in
                snapshot.peers += state.peers.count
                for peer in state.peers {
                    switch peer.phase {
                    case .ready: snapshot.ready += 1
                    case .failed:
                        snapshot.failed += 1
                        if snapshot.firstErrors.count < 3 { snapshot.firstErrors.append(peer.lastError) }
                    default: break
                    }
                    if peer.wsi != nil { snapshot.open += 1 }
                    snapshot.unanswered += peer.unanswered
                    if peer.plan.sends != nil, peer.plan.isRaw { snapshot.rawPublished += peer.messagesQueued }
                    snapshot.lastFirstReady = max(snapshot.lastFirstReady, peer.firstReadyAt)
                }
                let recorder = state.recorder
                snapshot.sent += recorder.sent
                snapshot.acks += recorder.acks
                snapshot.deliveries += recorder.deliveries
                snapshot.errors += recorder.errors.values.reduce(0, +)
                snapshot.ackedSeq.merge(recorder.ackedSeq, uniquingKeysWith: max)
            }
        }
        return snapshot
    }

    /// Waits until every peer is ready or has given up; returns the last snapshot.
    func waitUntilReady(timeout: Double) -> Snapshot {
        let start = Clock.now()
        var lastLog = start
        while true {
            let snapshot = snapshot()
            if snapshot.peers == peerCount, snapshot.ready + snapshot.failed >= peerCount { return snapshot }
            if Clock.seconds(since: start) > timeout { return snapshot }
            if Clock.seconds(since: lastLog) >= 2 {
                log("connecting: \(snapshot.ready) of \(peerCount) ready, \(snapshot.failed) failed")
                lastLog = Clock.now()
            }
            tick(0.05)
        }
    }

    func startSending(start: UInt64, measureFrom: UInt64) {
        for loop in loops { loop.post(.startSending(start: start, measureFrom: measureFrom)) }
    }

    func stopSending() {
        for loop in loops { loop.post(.stopSending) }
    }

    func dropSubscribers() {
        for loop in loops { loop.post(.dropSubscribers) }
    }

    /// Sleeps `seconds` in small steps, letting the loops retry connections, printing progress.
    func run(for seconds: Double, label: String) {
        let start = Clock.now()
        var lastLog = start
        var last = snapshot()
        while Clock.seconds(since: start) < seconds {
            tick(min(0.1, max(0.001, seconds - Clock.seconds(since: start))))
            if Clock.seconds(since: lastLog) >= 1 {
                let now = snapshot()
                let elapsed = Clock.seconds(since: lastLog)
                log(String(format: "%@ %4.0f s: %8.0f sent/s %8.0f acks/s %9.0f deliveries/s  %d/%d connected, %d errors",
                           label, Clock.seconds(since: start), Double(now.sent - last.sent) / elapsed,
                           Double(now.acks - last.acks) / elapsed, Double(now.deliveries - last.deliveries) / elapsed,
                           now.open, now.peers, now.errors))
                last = now
                lastLog = Clock.now()
            }
        }
    }

    /// How many subscriptions lag behind the channels' acked seqs (raw: the publisher's
    /// count), and by how many messages in all.
    func behind(_ targets: [Int: Int], rawPublished: UInt64) -> (subscriptions: Int, messages: Int) {
        var subscriptions = 0
        var messages = 0
        for loop in loops {
            loop.inspect { state in
                for peer in state.peers where peer.phase != .failed {
                    if peer.plan.rawSubscriber, peer.rawReceived < rawPublished {
                        subscriptions += 1
                        messages += Int(rawPublished - peer.rawReceived)
                    }
                    for subscription in peer.subscriptions {
                        let target = targets[subscription.channel, default: 0]
                        if subscription.lastSeq < target {
                            subscriptions += 1
                            messages += target - subscription.lastSeq
                        }
                    }
                }
            }
        }
        return (subscriptions, messages)
    }

    /// After the senders stopped: waits for every answer, then for every subscriber to
    /// reach the last acked seq of its channels. Returns the messages still missing.
    func drain(timeout: Double) -> (lost: Int, seconds: Double, unanswered: Int) {
        let start = Clock.now()
        while true {
            let snapshot = snapshot()
            let (_, missing) = behind(snapshot.ackedSeq, rawPublished: snapshot.rawPublished)
            if snapshot.unanswered == 0 && missing == 0 { return (0, Clock.seconds(since: start), 0) }
            if Clock.seconds(since: start) > timeout {
                log("drain: gave up after \(Int(timeout)) s: \(snapshot.unanswered) unanswered, \(missing) deliveries missing")
                return (missing, Clock.seconds(since: start), snapshot.unanswered)
            }
            tick(0.02)
        }
    }

    /// After a drop: waits until every subscription has finished its replay and then
    /// received a message scheduled after its reconnect. Returns the seconds from `since`
    /// to the last `event.synced` and to the last first live delivery, nil on timeout.
    func waitUntilCaughtUp(since: UInt64, timeout: Double) -> (synced: Double, live: Double)? {
        while Clock.seconds(since: since) < timeout {
            var done = true
            var lastSynced: UInt64 = 0
            var lastLive: UInt64 = 0
            for loop in loops {
                loop.inspect { state in
                    for peer in state.peers where peer.phase != .failed && !peer.isSender {
                        for subscription in peer.subscriptions {
                            if !subscription.synced || subscription.liveAt == 0 || subscription.syncedAt < since {
                                done = false
                                return
                            }
                            lastSynced = max(lastSynced, subscription.syncedAt)
                            lastLive = max(lastLive, subscription.liveAt)
                        }
                    }
                }
                if !done { break }
            }
            if done { return (Double(lastSynced - since) / 1e9, Double(lastLive - since) / 1e9) }
            tick(0.005)
        }
        return nil
    }

    /// Closes every connection; returns the merged measurements.
    func finish() -> Recorder {
        for loop in loops { loop.post(.closeAll) }
        let start = Clock.now()
        while Clock.seconds(since: start) < 10 {
            if snapshot().open == 0 { break }
            tick(0.02)
        }
        var merged = Recorder()
        for loop in loops { loop.inspect { merged.merge($0.recorder) } }
        return merged
    }

    /// Sleeps, then lets each loop retry the connections that are due.
    private func tick(_ seconds: Double) {
        usleep(UInt32(seconds * 1e6))
        for loop in loops { loop.post(.tick) }
    }
}
