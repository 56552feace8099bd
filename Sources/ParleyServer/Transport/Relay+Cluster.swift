import Foundation
import ParleyProtocol
import ParleyStore

// Several nodes on one database: every channel with subscribers here has a feed
// (`ChannelFeed`) that puts this node's own commits and other nodes' (from the LISTEN
// thread) in commit order before fan-out. Service thread only.
extension Relay {
    /// How long a gap may wait for an announcement before it is read from the tables.
    static let gapGrace = 0.3
    /// How many messages one gap read takes.
    static let gapPageSize = 500
    /// How many recent `event.member`s are remembered, so a catch-up does not send one twice.
    static let recentMemberEventsKept = 4096

    static var now: Double { Date().timeIntervalSince1970 }

    // MARK: Watching channels

    /// A connection subscribes to a channel: its first subscriber here starts its feed.
    func addSubscriber(_ connectionID: UInt64, channel: ID) {
        channelSubscribers[channel, default: []].insert(connectionID)
        if feeds[channel] == nil {
            nextFeedEpoch += 1
            feeds[channel] = ChannelFeed(epoch: nextFeedEpoch)
            listener.watch(channel)
        }
    }

    /// A subscription ended: the channel's last subscriber here ends its feed.
    func removeSubscriber(_ connectionID: UInt64, channel: ID) {
        channelSubscribers[channel]?.remove(connectionID)
        guard channelSubscribers[channel]?.isEmpty ?? true else { return }
        channelSubscribers.removeValue(forKey: channel)
        feeds.removeValue(forKey: channel)
        listener.unwatch(channel)
    }

    // MARK: Events in

    /// A commit of this node (from a worker's outcome).
    func localCommit(_ effect: Effect) {
        let now = Self.now
        switch effect {
        case .message(let record, let membershipVersion):
            metrics.messageStored()
            guard feeds[record.channelID] != nil else { return }
            feeds[record.channelID]!.add(record, membershipVersion: membershipVersion, now: now)
            releaseFeed(record.channelID)
        case .key(let record, let copies, let atSeq):
            guard feeds[record.channelID] != nil else { return }
            feeds[record.channelID]!.add(.key(record, copies: copies), atSeq: atSeq, now: now)
            releaseFeed(record.channelID)
        case .member(let event, let members, let atSeq):
            routeMember(event, members: members, atSeq: atSeq, now: now)
        case .authenticated, .loggedOut:
            break
        }
    }

    func clusterEvent(_ event: ClusterEvent) {
        let now = Self.now
        switch event {
        case .listening(let up):
            listening = up
            if !up { fetchGaps(now: now) }
        case .tick:
            fetchGaps(now: now)
        case .caughtUp(let states, let urgent):
            for state in states {
                guard var feed = feeds[state.channelID] else { continue }
                feed.learn(state.lastSeq, now: now)
                if urgent && feed.missing != nil { feed.urgent = true }
                // Only after an outage: otherwise the key's own announcement is on its way.
                let keyMissed = urgent && feed.head != nil && state.keyID != nil && state.keyID != feed.keyID
                feeds[state.channelID] = feed
                if keyMissed, let keyID = state.keyID { readKey(keyID, channel: state.channelID, atSeq: state.lastSeq) }
            }
            fetchGaps(now: now)
        case .remote(let items):
            var touched: Set<ID> = []
            for item in items {
                switch item {
                case .message(let record, let membershipVersion):
                    guard feeds[record.channelID] != nil else { continue }
                    feeds[record.channelID]!.add(record, remote: true, membershipVersion: membershipVersion, now: now)
                    touched.insert(record.channelID)
                case .key(let record, let copies, let atSeq):
                    guard feeds[record.channelID] != nil else { continue }
                    feeds[record.channelID]!.add(.key(record, copies: copies), atSeq: atSeq, now: now)
                    touched.insert(record.channelID)
                case .member(let event, let members, let atSeq):
                    routeMember(event, members: members, atSeq: atSeq, now: now)
                }
            }
            for channel in touched { releaseFeed(channel) }
        }
    }

    /// A membership change goes through the channel's feed when it has one (its place
    /// among the messages matters to subscribers); otherwise straight to the connections
    /// of the user it concerns.
    private func routeMember(_ event: Event.Member, members: [ID], atSeq: Int, now: Double) {
        guard let feed = feeds[event.channelID] else {
            deliverMember(event)
            return
        }
        // A catch-up may name changes older than this feed's start.
        guard feed.head == nil || event.membership.version > feed.membershipVersion else { return }
        feeds[event.channelID]!.add(.member(event, members: members), atSeq: atSeq, now: now)
        releaseFeed(event.channelID)
    }

    /// Where a subscription found the channel: the feed's start, if it is the first.
    func feedStarted(_ start: SubscriptionStart) {
        guard feeds[start.channelID] != nil else { return }
        feeds[start.channelID]!.start(lastSeq: start.lastSeq, keyID: start.currentKeyID,
                                      membershipVersion: start.membershipVersion, now: Self.now)
        releaseFeed(start.channelID)
    }

    // MARK: Release

    /// Sends out whatever the feed can release now. Delivery may end the feed (a removal
    /// of its last subscriber), so the feed is written back first.
    func releaseFeed(_ channel: ID) {
        // In place: a copy of the feed would copy its pending messages at every release.
        guard let items = feeds[channel]?.release(now: Self.now) else { return }
        for item in items {
            switch item {
            case .message(let record, let remote):
                if remote { metrics.crossNodeMessage() }
                deliverMessage(record)
            case .key(let record, let copies):
                deliverKey(record, copies: copies)
            case .member(let event, _):
                deliverMember(event)
            }
        }
        if feeds[channel]?.shouldFetch(now: Self.now, grace: Self.gapGrace, listening: listening) == true {
            fetchGap(channel)
        }
        if feeds[channel]?.shouldReadFence(now: Self.now, grace: Self.gapGrace) == true { readFence(channel) }
    }

    // MARK: Gaps

    private func fetchGaps(now: Double) {
        for (channel, feed) in feeds {
            if feed.shouldFetch(now: now, grace: Self.gapGrace, listening: listening) { fetchGap(channel) }
            if feed.shouldReadFence(now: now, grace: Self.gapGrace) { readFence(channel) }
        }
    }

    /// Reads what a held message waits for, when its announcement did not come: the
    /// membership changes (they go out in their place, their `at_seq`) or the key record.
    private func readFence(_ channel: ID) {
        guard var feed = feeds[channel], let wait = feed.waitingFor, !feed.waitReadInFlight else { return }
        feed.waitReadInFlight = true
        feeds[channel] = feed
        let epoch = feed.epoch, atSeq = feed.head ?? 0, completions = self.completions
        outstandingJobs += 1
        workers.submit(key: "feed-\(channel.string)") { database in
            switch wait {
            case .membership(let versions):
                let changes = database.flatMap {
                    try? ClusterQueries.changes(channelID: channel, after: versions.lowerBound - 1,
                                                through: versions.upperBound, on: $0)
                }
                completions.push(.feedMembers(channel: channel, epoch: epoch, changes))
            case .key(let keyID):
                let found = database.flatMap { try? ClusterQueries.keyWithPlace(keyID, on: $0) }
                completions.push(.feedKey(channel: channel, epoch: epoch,
                                          found.map { ($0.record, $0.copies, $0.atSeq ?? atSeq) }))
            }
        }
    }

    func feedMembersArrived(_ channel: ID, epoch: UInt64, _ changes: [(Event.Member, members: [ID], atSeq: Int?)]?) {
        guard let feed = feeds[channel], feed.epoch == epoch else { return }
        feeds[channel]!.waitReadInFlight = false
        if let changes, changes.isEmpty { feeds[channel]!.passFence() }
        let now = Self.now
        for (event, members, atSeq) in changes ?? [] {
            // The message waiting is at head + 1: a change without at_seq goes right before it.
            routeMember(event, members: members, atSeq: min(atSeq ?? feed.head ?? 0, feed.head ?? 0), now: now)
        }
        releaseFeed(channel)
    }

    /// Reads a feed's gap from the tables on a worker.
    private func fetchGap(_ channel: ID) {
        guard var feed = feeds[channel], let missing = feed.missing, !feed.fetchInFlight else { return }
        feed.fetchInFlight = true
        feeds[channel] = feed
        metrics.gapRead()
        let after = missing.lowerBound - 1, through = missing.upperBound, epoch = feed.epoch
        let service = self.service, completions = self.completions
        outstandingJobs += 1
        workers.submit(key: "feed-\(channel.string)") { database in
            let result: Result<[MessageRecord], ErrorFrame> = database.map {
                service.replay(channelID: channel, after: after, through: through, limit: Self.gapPageSize,
                               byteBudget: 1 << 20, on: $0)
            } ?? .failure(ErrorFrame(re: nil, code: .unavailable, message: "database unavailable"))
            completions.push(.feedFilled(channel: channel, epoch: epoch, after: after, through: through, result))
        }
    }

    func feedFilled(_ channel: ID, epoch: UInt64, after: Int, through: Int, result: Result<[MessageRecord], ErrorFrame>) {
        guard var feed = feeds[channel], feed.epoch == epoch else { return }
        switch result {
        case .success(let records):
            feed.filled(records, after: after, through: through, now: Self.now)
            feeds[channel] = feed
            releaseFeed(channel)
        case .failure:
            // The next tick tries again.
            feed.fetchInFlight = false
            feeds[channel] = feed
        }
    }

    /// Reads a key record a catch-up found this node did not fan out.
    private func readKey(_ keyID: ID, channel: ID, atSeq: Int) {
        guard let epoch = feeds[channel]?.epoch else { return }
        let completions = self.completions
        outstandingJobs += 1
        workers.submit(key: "feed-\(channel.string)") { database in
            let found = database.flatMap { try? ClusterQueries.keyWithPlace(keyID, on: $0) }
            completions.push(.feedKey(channel: channel, epoch: epoch,
                                      found.map { ($0.record, $0.copies, $0.atSeq ?? atSeq) }))
        }
    }

    func feedKeyArrived(_ channel: ID, epoch: UInt64, _ found: (KeyRecord, copies: [ID: [UInt8]], atSeq: Int)?) {
        guard let feed = feeds[channel], feed.epoch == epoch else { return }
        if case .key(let waited) = feed.waitingFor, found?.0.keyID == waited || found == nil {
            feeds[channel]!.waitReadInFlight = false
        }
        if let (record, copies, atSeq) = found, feed.keyID != record.keyID {
            feeds[channel]!.add(.key(record, copies: copies), atSeq: atSeq, now: Self.now)
        }
        releaseFeed(channel)
    }

    // MARK: Fan-out

    func deliverMessage(_ record: MessageRecord) {
        let frame = FrameBuffer(Event.message(record).encode())
        var delivered = 0
        for id in channelSubscribers[record.channelID] ?? [] {
            guard let connection = connections[id], connection.pendingClose == nil,
                  connection.subscriptions[record.channelID] != nil else { continue }
            if let released = connection.subscriptions[record.channelID]?.accept(seq: record.seq, frame: frame) {
                enqueue(released, to: connection, live: true)
                delivered += 1
            } else if connection.pendingLiveBytes > configuration.outgoingQueueBytes {
                closeSlowConsumer(connection)   // held during a replay it cannot finish
            }
        }
        metrics.delivered(delivered)
        metrics.frameOut("event.message", count: delivered)
    }

    func deliverKey(_ record: KeyRecord, copies: [ID: [UInt8]]) {
        for id in channelSubscribers[record.channelID] ?? [] {
            guard let connection = connections[id], let user = connection.userID else { continue }
            var own = record
            own.encryptedKey = copies[user]
            enqueue(FrameBuffer(Event.key(own).encode()), to: connection, live: true)
            metrics.frameOut("event.key")
        }
    }

    /// `event.member` to the channel's subscribers and every connection of the user it
    /// concerns, each once; a removal ends that user's subscriptions to the channel. The
    /// same change is never sent twice (a catch-up may read it again).
    func deliverMember(_ event: Event.Member) {
        let key = "\(event.channelID.string) \(event.membership.version) \(event.userID.string)"
        guard recentMemberEvents.insert(key).inserted else { return }
        recentMemberEventOrder.append(key)
        if recentMemberEventOrder.count > Self.recentMemberEventsKept {
            recentMemberEvents.remove(recentMemberEventOrder.removeFirst())
        }
        let frame = FrameBuffer(Event.member(event).encode())
        let targets = (channelSubscribers[event.channelID] ?? []).union(userConnections[event.userID] ?? [])
        for id in targets {
            guard let connection = connections[id] else { continue }
            enqueue(frame, to: connection, live: true)
            metrics.frameOut("event.member")
        }
        if event.action == .removed {
            // Nothing of the channel reaches the removed user afterwards.
            for id in userConnections[event.userID] ?? [] {
                if let connection = connections[id] { endSubscription(connection, channel: event.channelID) }
            }
        }
    }
}
