import Foundation
import ParleyCrypto
import ParleyProtocol

// The key manager (§6): fetching, checking and caching channel keys; rotating.
extension ParleyClient {
    /// Rotates the channel key now (e.g. after suspecting a compromise): a fresh key
    /// wrapped for exactly the members of the latest verified statement. Returns its id.
    @discardableResult
    public func rotateKey(in channelID: ID) async throws -> ID {
        let newest = try await newestKey(channelID)
        return try await rotate(channelID, previousKeyID: newest.record?.keyID).keyID
    }

    /// A key to send with: the cached one while it is fresh and made for the current
    /// verified membership, else the relay's newest when it checks out, else a new one.
    /// `refusing` is a key the relay just called expired.
    func keyForSending(_ channelID: ID, refusing refused: ID?) async throws -> ChannelKey {
        if let id = sendKeys[channelID], id != refused, let key = channelKeys[id], usableForSending(key) {
            return key
        }
        sendKeys[channelID] = nil
        if let running = sendKeyTasks[channelID] { return try await running.value }
        let task = Task { try await self.establishSendKey(channelID, refusing: refused) }
        sendKeyTasks[channelID] = task
        defer { if sendKeyTasks[channelID] == task { sendKeyTasks[channelID] = nil } }
        return try await task.value
    }

    private func usableForSending(_ key: ChannelKey) -> Bool {
        key.expiresAt - configuration.keyExpiryMarginMs > Self.nowMilliseconds
            && key.membershipVersion == chains[key.channelID]?.version
    }

    private func establishSendKey(_ channelID: ID, refusing refused: ID?) async throws -> ChannelKey {
        let newest = try await newestKey(channelID)
        if let record = newest.record, record.keyID != refused, let key = try await adoptable(newest) {
            return key
        }
        return try await rotate(channelID, previousKeyID: newest.record?.keyID)
    }

    /// The relay's newest key when it can be sent with: no rotation required, a copy for
    /// this user, not about to expire, checked, and made for the current verified
    /// membership. A key that fails its checks is never used (and was reported).
    private func adoptable(_ newest: (record: KeyRecord?, rotationRequired: Bool)) async throws -> ChannelKey? {
        guard let record = newest.record, !newest.rotationRequired, record.encryptedKey != nil,
              record.expiresAt - configuration.keyExpiryMarginMs > Self.nowMilliseconds else { return nil }
        do {
            var key = try await accept(record)
            key.expiresAt = min(key.expiresAt, record.expiresAt)
            channelKeys[key.keyID] = key
            let chain = try await verifiedChain(record.channelID, reaching: key.membershipVersion)
            guard key.membershipVersion == chain.version else { return nil }
            sendKeys[record.channelID] = key.keyID
            return key
        } catch let error as ClientError where error.isTransient {
            throw error
        } catch {
            return nil
        }
    }

    /// `key` for the newest key of the channel.
    func newestKey(_ channelID: ID) async throws -> (record: KeyRecord?, rotationRequired: Bool) {
        guard case .key(let result) = try await send(.key(.init(channelID: channelID))) else {
            throw ClientError.unexpectedReply("key")
        }
        if let record = result.key, record.channelID != channelID {
            throw ClientError.unexpectedReply("a key of another channel")
        }
        return (result.key, result.rotationRequired)
    }

    /// Makes, wraps (for exactly the members of the latest verified statement, keys
    /// checked against the pins), signs and stores a new key. On `key_conflict` the
    /// winner's key is fetched, checked and used; on `members_mismatch` the chain is read
    /// again (only verified members are ever wrapped for).
    func rotate(_ channelID: ID, previousKeyID: ID?) async throws -> ChannelKey {
        let me = try requireIdentity()
        var previous = previousKeyID
        var lastError = ClientError.unexpectedReply("rotation")
        for _ in 0..<6 {
            let chain = try await refreshChain(channelID)
            guard chain.members.contains(me.userID) else {
                throw ClientError.invalidRequest("not a member of the verified membership of \(channelID)")
            }
            let recipients = try await recipientKeys(for: chain)
            let made: (request: Request.Keys, key: SymmetricKey)
            do {
                made = try ChannelCrypto.makeKeyRecord(
                    channelID: channelID, previousKeyID: previous, membershipVersion: chain.version,
                    recipients: recipients, creator: me.privateKey)
            } catch {
                throw ClientError.crypto("cannot make a channel key: \(error)")
            }
            do {
                guard case .keys(let result) = try await send(.keys(made.request)) else {
                    throw ClientError.unexpectedReply("keys")
                }
                statistics.rotations += 1
                return keep(made, channelID: channelID, creator: me.userID, version: chain.version, expiresAt: result.expiresAt)
            } catch let error as ClientError {
                lastError = error
                switch error {
                case .relay(let frame) where frame.code == .keyConflict:
                    statistics.keyConflicts += 1
                    let newest = try await newestKey(channelID)
                    if let winner = try await adoptable(newest) { return winner }
                    previous = newest.record?.keyID ?? frame.currentKeyID
                case .relay(let frame) where frame.code == .membersMismatch:
                    continue
                case .relay(let frame) where frame.code.isRetryable:
                    try await Task.sleep(nanoseconds: Self.nanoseconds(Double(frame.retryAfterMs ?? 200) / 1000))
                case .disconnected, .timeout:
                    // The key may have been stored before the reply was lost.
                    let newest = try await newestKey(channelID)
                    if let record = newest.record, record.keyID == made.request.keyID {
                        return keep(made, channelID: channelID, creator: me.userID, version: chain.version,
                                    expiresAt: record.expiresAt)
                    }
                    if let winner = try await adoptable(newest) { return winner }
                    previous = newest.record?.keyID
                default:
                    throw error
                }
            }
        }
        throw lastError
    }

    private func keep(
        _ made: (request: Request.Keys, key: SymmetricKey), channelID: ID, creator: ID, version: Int, expiresAt: Int
    ) -> ChannelKey {
        let key = ChannelKey(
            keyID: made.request.keyID, channelID: channelID, creatorID: creator, membershipVersion: version,
            key: made.key, expiresAt: expiresAt)
        channelKeys[key.keyID] = key
        sendKeys[channelID] = key.keyID
        return key
    }

    /// The public keys of exactly the chain's members: as the relay lists them now,
    /// checked against the pins (a changed key stops the rotation, loudly), or pinned ones
    /// for members the relay does not list.
    private func recipientKeys(for chain: MembershipChain) async throws -> [(userID: ID, publicKey: RSAPublicKey)] {
        guard case .channelMembers(let list) = try await send(.channelMembers(.init(channelID: chain.channelID))) else {
            throw ClientError.unexpectedReply("channel.members")
        }
        var recipients: [(userID: ID, publicKey: RSAPublicKey)] = []
        for member in chain.members {
            if let listed = list.members.first(where: { $0.userID == member }) {
                recipients.append((member, try trust(userID: member, publicKey: listed.publicKey)))
            } else {
                recipients.append((member, try await pinnedKey(member)))
            }
        }
        return recipients
    }

    /// The key `keyID` of the channel, for reading: cached, or fetched and checked.
    func channelKey(_ channelID: ID, _ keyID: ID) async throws -> ChannelKey {
        if let key = channelKeys[keyID] {
            guard key.channelID == channelID else {
                throw refuse(VerificationFailure(.keyRecord, channelID: channelID, "key \(keyID) belongs to another channel"))
            }
            return key
        }
        guard case .key(let result) = try await send(.key(.init(channelID: channelID, keyID: keyID))) else {
            throw ClientError.unexpectedReply("key")
        }
        guard let record = result.key, record.keyID == keyID, record.channelID == channelID else {
            throw refuse(VerificationFailure(.keyRecord, channelID: channelID, "the relay answered with another key than \(keyID)"))
        }
        return try await accept(record)
    }

    /// Checks a key record as §6 asks (signature by the creator's pinned key, creator a
    /// member of that verified membership version, unwrapped key matching the digest) and
    /// caches the key. A failure is reported loudly.
    func accept(_ record: KeyRecord) async throws -> ChannelKey {
        if let known = channelKeys[record.keyID] {
            guard known.channelID == record.channelID else {
                throw refuse(VerificationFailure(.keyRecord, channelID: record.channelID, "key \(record.keyID) belongs to another channel"))
            }
            return known
        }
        let me = try requireIdentity()
        guard record.encryptedKey != nil else {
            throw ClientError.unexpectedReply("key \(record.keyID) holds no copy for this user")
        }
        let chain = try await verifiedChain(record.channelID, reaching: record.membershipVersion)
        let creatorKey = try await pinnedKey(record.creatorID)
        do {
            let key = try ChannelCrypto.checkKeyRecord(record, chain: chain, creatorKey: creatorKey, recipient: me.privateKey)
            channelKeys[key.keyID] = key
            return key
        } catch {
            throw refuse(error)
        }
    }
}
