import Foundation
import ParleyCrypto
import ParleyProtocol

// Messages (§7), subscriptions and the event task (§8).
extension ParleyClient {
    /// Encrypts, signs and sends `text`. Expired or conflicting keys, a changed membership
    /// and dropped connections are handled inside (rotation, the winner's key, a refreshed
    /// chain, a retry with the same `client_msg_id`), so none of them fails the send.
    @discardableResult
    public func send(text: String, to channelID: ID) async throws -> SentMessage {
        let me = try requireIdentity()
        let clientMsgID = ID.random()
        var refused: ID?
        var lastError = ClientError.disconnected
        for _ in 0..<max(configuration.sendAttempts, 1) {
            var keyID: ID?
            do {
                let key = try await keyForSending(channelID, refusing: refused)
                keyID = key.keyID
                let ts = Self.nowSeconds
                let box: AESGCM.SealedBox
                do {
                    box = try ChannelCrypto.seal(text: text, channelID: channelID, ts: ts, key: key.key, signer: me.privateKey)
                } catch {
                    throw ClientError.crypto("cannot seal the message: \(error)")
                }
                let request = Request.message(.init(
                    channelID: channelID, keyID: key.keyID, iv: box.iv, ciphertext: box.ciphertext, ts: ts,
                    clientMsgID: clientMsgID))
                guard case .message(let result) = try await send(request) else { throw ClientError.unexpectedReply("message") }
                if result.duplicate { statistics.duplicateSends += 1 }
                return SentMessage(
                    channelID: channelID, seq: result.seq, receivedAt: result.receivedAt, clientMsgID: clientMsgID,
                    keyID: key.keyID)
            } catch let error as ClientError {
                lastError = error
                switch error {
                case .relay(let frame) where frame.code == .keyExpired:
                    statistics.keyExpiredRetries += 1
                    refused = keyID
                    if let keyID, sendKeys[channelID] == keyID { sendKeys[channelID] = nil }
                case .relay(let frame) where frame.code.isRetryable:
                    try await Task.sleep(nanoseconds: Self.nanoseconds(Double(frame.retryAfterMs ?? 200) / 1000))
                case .disconnected, .timeout:
                    continue   // the relay answers a repeated client_msg_id with the first result
                default:
                    throw error
                }
            }
        }
        throw lastError
    }

    /// A page of history, decrypted and verified (`messages`: with `after`, the first
    /// `limit` above it; otherwise the newest below `before`).
    public func history(of channelID: ID, after: Int? = nil, before: Int? = nil, limit: Int? = nil) async throws -> HistoryPage {
        let request = Request.messages(.init(channelID: channelID, after: after, before: before, limit: limit))
        guard case .messages(let page) = try await send(request) else { throw ClientError.unexpectedReply("messages") }
        var messages: [DecryptedMessage] = []
        for record in page.messages {
            guard record.channelID == channelID else { continue }
            switch await open(record) {
            case .shown(let message): messages.append(message)
            case .dropped: continue
            case .later(let error): throw error
            }
        }
        return HistoryPage(messages: messages, hasMore: page.hasMore)
    }

    /// Follows channels: their messages come out of `events`, and after a reconnect the
    /// client resubscribes from the last `seq` delivered. `after` resumes channels from a
    /// position kept elsewhere (see `lastDeliveredSeq(of:)`), e.g. across restarts: the
    /// messages above it are replayed first (paged from history when more than 1000).
    @discardableResult
    public func subscribe(to channelIDs: [ID], after positions: [ID: Int] = [:]) async throws -> [Response.SubscribedChannel] {
        for (channelID, seq) in positions where channelIDs.contains(channelID) {
            lastDelivered[channelID] = max(lastDelivered[channelID] ?? 0, seq)
        }
        let added = Set(channelIDs).subtracting(followed)
        followed.formUnion(channelIDs)
        let request = Request.subscribe(.init(channels: channelIDs.map { .init(channelID: $0, after: lastDelivered[$0]) }))
        do {
            guard case .subscribe(let result) = try await send(request) else { throw ClientError.unexpectedReply("subscribe") }
            return result.channels
        } catch {
            followed.subtract(added)
            throw error
        }
    }

    /// The last `seq` of the channel delivered on `events` (to resume from after a restart).
    public func lastDeliveredSeq(of channelID: ID) -> Int? {
        lastDelivered[channelID]
    }

    /// Stops following channels.
    public func unsubscribe(from channelIDs: [ID]) async throws {
        followed.subtract(channelIDs)
        _ = try await send(.unsubscribe(.init(channelIDs: channelIDs)))
    }

    // MARK: - Opening one message

    enum Opened {
        /// Decrypted and verified, or unverifiable: shown either way.
        case shown(DecryptedMessage)
        /// A replay: never shown.
        case dropped
        /// The relay could not be asked (for the key or the sender): try again later.
        case later(ClientError)
    }

    /// Key (checked), decryption, format, sender's signature with its pinned key, replay.
    func open(_ record: MessageRecord) async -> Opened {
        var attempts = 0
        while true {
            do {
                let key = try await channelKey(record.channelID, record.keyID)
                let senderKey = try await pinnedKey(record.senderID)
                let content = ChannelCrypto.open(record, key: key.key, senderKey: senderKey)
                if case .text = content,
                   case .replay(let first) = replayGuard.admit(keyID: record.keyID, iv: record.iv, seq: record.seq) {
                    alert(.replayDropped(channelID: record.channelID, seq: record.seq, firstSeq: first))
                    return .dropped
                }
                return .shown(decrypted(record, content))
            } catch let error as ClientError where error.isTransient {
                attempts += 1
                if attempts >= 3 { return .later(error) }
            } catch {
                return .shown(decrypted(record, .unverifiable(reason: String(describing: error))))
            }
        }
    }

    private func decrypted(_ record: MessageRecord, _ content: DecryptedMessage.Content) -> DecryptedMessage {
        DecryptedMessage(
            channelID: record.channelID, seq: record.seq, senderID: record.senderID, keyID: record.keyID,
            ts: record.ts, receivedAt: record.receivedAt, content: content)
    }

    // MARK: - The event task

    /// One item from the relay, in order. May send requests of its own.
    func process(_ item: Inbound) async {
        switch item {
        case .subscribed(let channelID, let lastSeq, let replay, let recovered):
            if !replay, lastDelivered[channelID] == nil { lastDelivered[channelID] = lastSeq }
            // More than 1000 missed: nothing is replayed, so page the gap from history.
            if !recovered { _ = await fillGap(channelID, through: lastSeq) }
        case .event(.message(let record)):
            await deliver(record)
        case .event(.synced(let synced)):
            lastDelivered[synced.channelID] = max(lastDelivered[synced.channelID] ?? 0, synced.seq)
        case .event(.key(let record)):
            await keyEvent(record)
        case .event(.member(let member)):
            await memberEvent(member)
        }
    }

    /// Every seq once, in order: older ones are dropped, a gap is paged from history first.
    private func deliver(_ record: MessageRecord) async {
        let channelID = record.channelID
        if let last = lastDelivered[channelID] {
            if record.seq <= last { return }
            if record.seq > last + 1 {
                guard await fillGap(channelID, through: record.seq - 1) else { return }
            }
        }
        switch await open(record) {
        case .shown(let message):
            lastDelivered[channelID] = record.seq
            eventSink.yield(.message(message))
        case .dropped:
            lastDelivered[channelID] = record.seq
        case .later:
            // Left undelivered: the next message pages it from history, a reconnect replays it.
            break
        }
    }

    /// Pages the messages after the last delivered seq up to `end` from history. False
    /// when it could not (the caller then leaves the rest for later).
    private func fillGap(_ channelID: ID, through end: Int) async -> Bool {
        var cursor = lastDelivered[channelID] ?? 0
        while cursor < end {
            let request = Request.messages(.init(channelID: channelID, after: cursor, before: end + 1, limit: Limits.historyMaxLimit))
            guard case .messages(let page)? = try? await send(request) else { return false }
            for record in page.messages where record.channelID == channelID && record.seq > cursor && record.seq <= end {
                switch await open(record) {
                case .shown(let message): eventSink.yield(.message(message))
                case .dropped: break
                case .later: return false
                }
                cursor = record.seq
                lastDelivered[channelID] = cursor
            }
            if !page.hasMore || page.messages.isEmpty { break }
        }
        // Whatever lies below `end` and was not on a page is not visible to this member.
        lastDelivered[channelID] = max(lastDelivered[channelID] ?? 0, end)
        return true
    }

    private func keyEvent(_ record: KeyRecord) async {
        guard record.encryptedKey != nil else { return }
        guard let key = try? await accept(record) else { return }   // refused loudly inside, or retried on use
        if key.membershipVersion == chains[record.channelID]?.version,
           key.expiresAt - configuration.keyExpiryMarginMs > Self.nowMilliseconds {
            sendKeys[record.channelID] = key.keyID
        }
        eventSink.yield(.keyRotated(channelID: record.channelID, keyID: record.keyID, by: record.creatorID))
    }

    /// Verifies the event's statement as the next link (or one already verified), and that
    /// the event says what the statement says, before reporting the change.
    private func memberEvent(_ event: Event.Member) async {
        let channelID = event.channelID
        let statement = event.membership
        do {
            if let known = chains[channelID], statement.version <= known.version {
                guard known.statement(version: statement.version) == statement else {
                    throw refuse(VerificationFailure(
                        .membershipChain, channelID: channelID, "event.member carries another version \(statement.version) than the verified one"))
                }
            } else if let known = chains[channelID], statement.version == known.version + 1 {
                _ = try await verify([statement], in: channelID)
            } else {
                do {
                    try await refreshChain(channelID)
                } catch let error as ClientError where error.code == .notMember {
                    _ = try await verify([statement], in: channelID)
                }
                guard chains[channelID]?.statement(version: statement.version) == statement else {
                    throw refuse(VerificationFailure(.event, channelID: channelID, "event.member's statement is not in the chain"))
                }
            }
            guard let chain = chains[channelID], Self.describes(event, chain: chain) else {
                throw refuse(VerificationFailure(.event, channelID: channelID, "event.member does not match its statement"))
            }
            if let id = sendKeys[channelID], let key = channelKeys[id], key.membershipVersion < statement.version {
                sendKeys[channelID] = nil
            }
            if event.userID == identity?.userID, event.action == .removed { followed.remove(channelID) }
            eventSink.yield(.membership(channelID: channelID, userID: event.userID, action: event.action, by: event.by))
        } catch {
            // Refused loudly above, or the relay could not be asked: nothing to report as verified.
        }
    }

    /// Whether the event's user, action and signer are what its (verified) statement says.
    static func describes(_ event: Event.Member, chain: MembershipChain) -> Bool {
        let statement = event.membership
        guard event.by == statement.signerID else { return false }
        if statement.version == 1 {
            return event.action == .added && statement.members.contains(event.userID)
        }
        guard let previous = chain.statement(version: statement.version - 1) else { return false }
        switch MembershipChain.change(from: previous, to: statement) {
        case .add(let user)?: return event.action == .added && event.userID == user
        case .remove(let user)?: return event.action == .removed && event.userID == user
        default: return false
        }
    }
}
