import CLibWebSockets
import Foundation
import ParleyProtocol
import ParleyStore

// From a decoded frame to a worker job and back. Service thread only.
extension Relay {
    /// How many stored messages one replay job reads.
    static let replayPageSize = 200
    /// A replaying subscription asks for its next page when the connection has less than
    /// this queued, so a long backlog is produced as the socket drains.
    static let replayLowWater = 256 * 1024

    func handleFrame(_ bytes: [UInt8], from connection: Connection) {
        let frame: RequestFrame
        switch RequestDecoder.decode(bytes) {
        case .failure(let rejection):
            metrics.frameIn("invalid")
            send(rejection.errorFrame, to: connection)
            return
        case .success(let decoded):
            frame = decoded
        }
        metrics.frameIn(frame.request.type.rawValue)
        if draining {
            send(ErrorFrame(re: frame.id, code: .unavailable, message: "server shutting down, retry",
                            retryAfterMs: 1000), to: connection)
            return
        }
        if configuration.rateLimits.enabled {
            // Refused requests are not applied, so a client may simply retry them later.
            let wait = connection.requestBucket.take(now: RateLimiter.now())
                ?? rateLimiter.check(frame.request, user: connection.userID, address: connection.peerAddress)
            if let wait {
                metrics.rejected(.rateLimited)
                log.throttled(.debug, "request.rate_limited", "a request was refused by a rate limit",
                              ["conn": .int(Int(connection.id)), "addr": .string(connection.peerAddress),
                               "type": .string(frame.request.type.rawValue), "retry_after_ms": .int(wait)])
                send(ErrorFrame(re: frame.id, code: .rateLimited, message: "too many requests, slow down",
                                retryAfterMs: wait), to: connection)
                return
            }
        }
        guard connection.isAuthenticated || frame.request.type.allowedUnauthenticated else {
            send(ErrorFrame(re: frame.id, code: .unauthenticated, message: "authenticate first"), to: connection)
            return
        }
        switch frame.request {
        case .ping:
            send(ResultFrame(re: frame.id, response: .ping(.init(time: Int(Date().timeIntervalSince1970 * 1000)))),
                 to: connection)
        case .unsubscribe(let request):
            for channel in request.channelIDs { endSubscription(connection, channel: channel) }
            send(ResultFrame(re: frame.id, response: .unsubscribe(.init(channelIDs: request.channelIDs))), to: connection)
        case .subscribe(let request):
            subscribe(connection, id: frame.id, request: request)
        default:
            submit(frame, from: connection)
        }
    }

    /// The request context a worker sees for this connection.
    func context(of connection: Connection) -> RequestContext {
        RequestContext(connectionID: connection.id, nodeID: nodeID, userID: connection.userID,
                       sessionHash: connection.sessionHash)
    }

    /// Runs a request on a database worker. Requests that change a channel go to that
    /// channel's worker, so its commits come back in seq order; the rest go by connection.
    private func submit(_ frame: RequestFrame, from connection: Connection) {
        let context = context(of: connection)
        if case .message(let request) = frame.request {
            outstandingJobs += 1
            workers.submit(MessageSend(id: frame.id, context: context, request: request))
            return
        }
        let service = self.service
        let completions = self.completions
        let metrics = self.metrics
        let job: DatabaseWorkers.Job = { database in
            let started = Date()
            let outcome: Outcome
            if let database {
                outcome = service.handle(frame.request, id: frame.id, context: context, on: database)
            } else {
                outcome = Outcome(ErrorFrame(re: frame.id, code: .unavailable, message: "database unavailable, retry",
                                             retryAfterMs: 1000))
            }
            metrics.databaseCall(seconds: Date().timeIntervalSince(started))
            completions.push(.outcome(connection: context.connectionID, outcome))
        }
        outstandingJobs += 1
        if let channel = Self.channelChanged(by: frame.request) {
            workers.submit(key: channel, job)
        } else {
            workers.submit(key: connection.id, job)
        }
    }

    /// How a worker stores a batch of sends: one transaction, then every reply at once.
    static func storeSends(service: RelayService, metrics: Metrics,
                           completions: CompletionQueue) -> DatabaseWorkers.SendBatch {
        { sends, database in
            let started = Date()
            let outcomes = database.map { service.send(sends, on: $0) } ?? sends.map {
                Outcome(ErrorFrame(re: $0.id, code: .unavailable, message: "database unavailable, retry", retryAfterMs: 1000))
            }
            metrics.databaseCall(seconds: Date().timeIntervalSince(started))
            completions.push(contentsOf: zip(sends, outcomes).map { .outcome(connection: $0.context.connectionID, $1) })
        }
    }

    /// The channel a request writes to, if any.
    static func channelChanged(by request: Request) -> ID? {
        switch request {
        case .channelCreate(let create): return create.channelID
        case .channelAdd(let change), .channelRemove(let change): return change.channelID
        case .keys(let keys): return keys.channelID
        case .message(let message): return message.channelID
        default: return nil
        }
    }

    // MARK: Completions

    func drainCompletions() {
        for completion in completions.drain() {
            // Everything but the LISTEN thread's events answers a job submitted here.
            if case .cluster = completion {} else { outstandingJobs -= 1 }
            switch completion {
            case .outcome(let connectionID, let outcome):
                if let connection = connections[connectionID] {
                    if let code = outcome.errorCode {
                        metrics.error(code)
                        if code == .authFailed || code == .challengeFailed {
                            log.throttled(.info, "auth.failed", "a login or authentication was refused",
                                          ["conn": .int(Int(connectionID)), "addr": .string(connection.peerAddress),
                                           "code": .string(code.rawValue)])
                        }
                    }
                    metrics.frameOut(outcome.errorCode == nil ? "result" : "error")
                    enqueue(FrameBuffer(outcome.reply), to: connection, live: false)
                }
                for effect in outcome.effects { apply(effect, connectionID: connectionID) }
            case .subscriptionStarted(let connectionID, let requestID, let generation, let result):
                subscriptionStarted(connectionID, requestID: requestID, generation: generation, result: result)
            case .replayPage(let connectionID, let channel, let generation, let result):
                replayPageArrived(connectionID, channel: channel, generation: generation, result: result)
            case .cluster(let event):
                clusterEvent(event)
            case .feedFilled(let channel, let epoch, let after, let through, let result):
                feedFilled(channel, epoch: epoch, after: after, through: through, result: result)
            case .feedKey(let channel, let epoch, let found):
                feedKeyArrived(channel, epoch: epoch, found)
            case .feedMembers(let channel, let epoch, let changes):
                feedMembersArrived(channel, epoch: epoch, changes)
            }
        }
    }

    private func apply(_ effect: Effect, connectionID: UInt64) {
        switch effect {
        case .authenticated(let userID, let username, let sessionHash, let sessionExpiresAt):
            guard let connection = connections[connectionID] else { return }
            connection.userID = userID
            connection.username = username
            connection.sessionHash = sessionHash
            // The authentication deadline is over; the session's expiry closes it (4001).
            connection.authDeadline = nil
            connection.sessionExpiresAt = sessionExpiresAt
            arm(connection, at: sessionExpiresAt)
            userConnections[userID, default: []].insert(connection.id)
            sessionConnections[sessionHash, default: []].insert(connection.id)
            if log.enabled(.debug) {
                log.debug("auth.ok", "a connection authenticated",
                          ["conn": .int(Int(connection.id)), "user_id": .string(userID.string)])
            }

        case .loggedOut(let sessionHash):
            for id in sessionConnections.removeValue(forKey: sessionHash) ?? [] {
                guard let connection = connections[id] else { continue }
                if id == connectionID {
                    for channel in Array(connection.subscriptions.keys) { endSubscription(connection, channel: channel) }
                    if let user = connection.userID { userConnections[user]?.remove(id) }
                    connection.userID = nil
                    connection.username = nil
                    connection.sessionHash = nil
                    connection.sessionExpiresAt = nil
                    startAuthDeadline(connection)   // unauthenticated again
                } else {
                    close(connection, code: 4001, reason: "session ended")
                }
            }

        case .message, .key, .member:
            localCommit(effect)
        }
    }

    // MARK: Subscriptions

    private func subscribe(_ connection: Connection, id: String, request: Request.Subscribe) {
        nextGeneration += 1
        let generation = nextGeneration
        // Register first: whatever commits from now on reaches the new subscription live,
        // and whatever committed before is in the backlog the worker reads next.
        var replaced: [ID: Subscription?] = [:]
        for entry in request.channels where replaced[entry.channelID] == nil {
            replaced[entry.channelID] = .some(connection.subscriptions[entry.channelID])
            connection.subscriptions[entry.channelID] = Subscription(generation: generation)
            addSubscriber(connection.id, channel: entry.channelID)
        }
        pendingSubscribes[connection.id, default: [:]][id] = replaced

        let context = context(of: connection)
        let service = self.service
        let completions = self.completions
        outstandingJobs += 1
        workers.submit(key: connection.id) { database in
            let result: Result<[SubscriptionStart], ErrorFrame>
            if let database {
                result = service.startSubscriptions(request, id: id, context: context, on: database)
            } else {
                result = .failure(ErrorFrame(re: id, code: .unavailable, message: "database unavailable, retry",
                                             retryAfterMs: 1000))
            }
            completions.push(.subscriptionStarted(connection: context.connectionID, requestID: id,
                                                  generation: generation, result))
        }
    }

    private func subscriptionStarted(_ connectionID: UInt64, requestID: String, generation: UInt64,
                                     result: Result<[SubscriptionStart], ErrorFrame>) {
        guard let connection = connections[connectionID] else { return }
        let replaced = pendingSubscribes[connectionID]?.removeValue(forKey: requestID) ?? [:]
        switch result {
        case .failure(let error):
            // Not applied: put back what the request replaced.
            for (channel, previous) in replaced where connection.subscriptions[channel]?.generation == generation {
                if let previous {
                    connection.subscriptions[channel] = previous
                } else {
                    endSubscription(connection, channel: channel)
                }
            }
            send(error, to: connection)

        case .success(let starts):
            send(ResultFrame(re: requestID, response: .subscribe(.init(channels: starts.map {
                .init(channelID: $0.channelID, lastSeq: $0.lastSeq, recovered: $0.recovered)
            }))), to: connection)
            for start in starts { feedStarted(start) }
            for start in starts {
                guard var subscription = connection.subscriptions[start.channelID],
                      subscription.generation == generation else { continue }
                if let from = start.replayFrom, from < start.lastSeq {
                    subscription.lastDelivered = from
                    subscription.phase = .replaying(through: start.lastSeq, pageInFlight: false)
                    connection.subscriptions[start.channelID] = subscription
                } else {
                    subscription.lastDelivered = start.replayFrom ?? start.lastSeq
                    if start.replayFrom != nil {
                        let synced = start.syncedSeq ?? subscription.lastDelivered
                        enqueue(FrameBuffer(Event.synced(.init(channelID: start.channelID, seq: synced)).encode()),
                                to: connection, live: false)
                    }
                    // Seqs up to last_seq are covered (replayed, or before the live start).
                    subscription.lastDelivered = max(subscription.lastDelivered, start.lastSeq)
                    let released = subscription.goLive()
                    connection.subscriptions[start.channelID] = subscription
                    for frame in released { enqueue(frame, to: connection, live: true) }
                }
            }
            requestReplayPages(for: connection)
        }
    }

    /// Asks for the next replay page of every replaying subscription of a connection
    /// whose queue has drained enough.
    func requestReplayPages(for connection: Connection) {
        guard connection.queuedBytes < Self.replayLowWater, connection.pendingClose == nil else { return }
        for (channel, subscription) in connection.subscriptions {
            guard case .replaying(let through, false) = subscription.phase else { continue }
            connection.subscriptions[channel]?.phase = .replaying(through: through, pageInFlight: true)
            let after = subscription.lastDelivered
            let generation = subscription.generation
            let connectionID = connection.id
            let service = self.service
            let completions = self.completions
            outstandingJobs += 1
            workers.submit(key: connection.id) { database in
                let result: Result<[MessageRecord], ErrorFrame>
                if let database {
                    result = service.replay(channelID: channel, after: after, through: through,
                                            limit: Self.replayPageSize, on: database)
                } else {
                    result = .failure(ErrorFrame(re: nil, code: .unavailable, message: "database unavailable"))
                }
                completions.push(.replayPage(connection: connectionID, channel: channel, generation: generation, result))
            }
        }
    }

    private func replayPageArrived(_ connectionID: UInt64, channel: ID, generation: UInt64,
                                   result: Result<[MessageRecord], ErrorFrame>) {
        guard let connection = connections[connectionID],
              var subscription = connection.subscriptions[channel], subscription.generation == generation,
              case .replaying(let through, _) = subscription.phase
        else { return }
        guard case .success(let messages) = result else {
            // The client resumes from the last seq it received.
            close(connection, code: 1011, reason: "replay failed")
            return
        }
        for record in messages where record.seq > subscription.lastDelivered && record.seq <= through {
            subscription.lastDelivered = record.seq
            enqueue(FrameBuffer(Event.message(record).encode()), to: connection, live: false)
            metrics.frameOut("event.message")
        }
        if subscription.lastDelivered >= through || messages.isEmpty {
            enqueue(FrameBuffer(Event.synced(.init(channelID: channel, seq: through)).encode()), to: connection, live: false)
            subscription.lastDelivered = max(subscription.lastDelivered, through)
            let released = subscription.goLive()
            connection.subscriptions[channel] = subscription
            for frame in released { enqueue(frame, to: connection, live: true) }
        } else {
            subscription.phase = .replaying(through: through, pageInFlight: false)
            connection.subscriptions[channel] = subscription
            requestReplayPages(for: connection)
        }
    }

    func endSubscription(_ connection: Connection, channel: ID) {
        guard connection.subscriptions.removeValue(forKey: channel) != nil else { return }
        removeSubscriber(connection.id, channel: channel)
    }
}
