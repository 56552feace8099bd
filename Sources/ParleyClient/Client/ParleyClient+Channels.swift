import Foundation
import ParleyCrypto
import ParleyProtocol

// Channels and the signed membership chain (§5).
extension ParleyClient {
    /// The channels this user is a member of, as the relay lists them.
    public func channels() async throws -> [ChannelSummary] {
        guard case .channels(let result) = try await send(.channels) else { throw ClientError.unexpectedReply("channels") }
        return result.channels
    }

    /// Creates a channel owned by this user with `members` (this user added): makes the
    /// channel id and signs membership statement version 1. Returns the channel id.
    public func createChannel(name: String, members: [ID]) async throws -> ID {
        let me = try requireIdentity()
        let channelID = ID.random()
        var statement = MembershipChain.firstStatement(owner: me.userID, members: members, ts: Self.nowSeconds)
        statement.sig = try sign(statement.signedText(channelID: channelID), with: me)
        let request = Request.channelCreate(.init(channelID: channelID, name: name, membership: statement))
        guard case .channelCreate(let result) = try await send(request) else {
            throw ClientError.unexpectedReply("channel.create")
        }
        try record(statement, in: channelID, signedBy: me)
        for member in result.members { _ = try trust(userID: member.userID, publicKey: member.publicKey) }
        return channelID
    }

    /// Adds `userID` (signed by this user, who must own the channel). The user's key is
    /// looked up first: pinned on first sight, refused when it changed.
    public func add(userID: ID, to channelID: ID) async throws {
        _ = try await user(id: userID)
        try await changeMembership(of: channelID, user: userID, adding: true)
    }

    /// Removes `userID`: by the owner, or by the member itself (that is `leave`).
    public func remove(userID: ID, from channelID: ID) async throws {
        try await changeMembership(of: channelID, user: userID, adding: false)
    }

    /// Leaves the channel; an owner leaving hands the channel to the longest-standing
    /// member (the relay's rule, computed from the verified chain).
    public func leave(channel channelID: ID) async throws {
        try await remove(userID: try requireIdentity().userID, from: channelID)
    }

    /// The members of the channel: ids and roles from the verified chain, names and keys
    /// from the relay (keys checked against the pins). A relay list that disagrees with
    /// the verified chain is refused.
    public func members(of channelID: ID) async throws -> [ChannelMember] {
        var attempt = 0
        while true {
            attempt += 1
            let chain = try await refreshChain(channelID)
            guard case .channelMembers(let list) = try await send(.channelMembers(.init(channelID: channelID))) else {
                throw ClientError.unexpectedReply("channel.members")
            }
            guard list.membershipVersion == chain.version, Set(list.members.map(\.userID)) == Set(chain.members) else {
                // A change may have landed between the two requests: read both again once.
                if attempt < 3 { continue }
                throw refuse(VerificationFailure(
                    .memberList, channelID: channelID,
                    "the relay lists version \(list.membershipVersion) members that differ from verified version \(chain.version)"))
            }
            return try list.members.map { member in
                let key = try trust(userID: member.userID, publicKey: member.publicKey)
                return ChannelMember(
                    userID: member.userID, username: member.username,
                    role: member.userID == chain.owner ? .owner : .member, fingerprint: key.fingerprintBase64)
            }.sorted { $0.userID < $1.userID }
        }
    }

    /// The verified membership chain of a channel, brought up to date with the relay.
    public func membershipChain(of channelID: ID) async throws -> MembershipChain {
        try await refreshChain(channelID)
    }

    // MARK: - Internals

    /// Builds, signs and submits the next statement from the latest verified chain. A
    /// concurrent change that took the version first: the chain is read again and the
    /// statement made anew (a few times).
    private func changeMembership(of channelID: ID, user: ID, adding: Bool) async throws {
        let me = try requireIdentity()
        var attempt = 0
        while true {
            attempt += 1
            let chain = try await refreshChain(channelID)
            var statement = try chain.nextStatement(adding: adding, user: user, signer: me.userID, now: Self.nowSeconds)
            statement.sig = try sign(statement.signedText(channelID: channelID), with: me)
            let change = Request.MembershipChange(channelID: channelID, userID: user, membership: statement)
            do {
                _ = try await send(adding ? .channelAdd(change) : .channelRemove(change))
                try applied(statement, in: channelID, signedBy: me, subject: user, adding: adding)
                return
            } catch let error as ClientError where error.code == .badRequest || error == .disconnected {
                // Either another change took this version, or the reply was lost: the
                // chain says which.
                let refreshed: MembershipChain? = try? await refreshChain(channelID)
                if let fresh = refreshed ?? chains[channelID] {
                    if fresh.statement(version: statement.version) == statement {
                        try applied(statement, in: channelID, signedBy: me, subject: user, adding: adding)
                        return
                    }
                    if fresh.version >= statement.version, attempt < 3 { continue }
                }
                throw error
            }
        }
    }

    /// Bookkeeping after a membership change of ours went through.
    private func applied(_ statement: MembershipStatement, in channelID: ID, signedBy me: Identity, subject: ID, adding: Bool) throws {
        try record(statement, in: channelID, signedBy: me)
        sendKeys[channelID] = nil
        if !adding, subject == me.userID { followed.remove(channelID) }
    }

    /// Appends a statement this client signed to the verified chain (checked all the same).
    private func record(_ statement: MembershipStatement, in channelID: ID, signedBy me: Identity) throws {
        var chain = chains[channelID] ?? MembershipChain(channelID: channelID)
        let key = me.privateKey.publicKey
        do {
            try chain.extend(with: [statement]) { signer, text, sig in
                signer == me.userID && key.isValidSignature(sig, for: text)
            }
        } catch {
            throw refuse(error)
        }
        chains[channelID] = chain
    }

    func sign(_ text: [UInt8], with identity: Identity) throws -> [UInt8] {
        do {
            return try identity.privateKey.signature(for: text)
        } catch {
            throw ClientError.crypto("cannot sign: \(error)")
        }
    }

    /// Fetches the statements after the last verified version and verifies them.
    @discardableResult
    func refreshChain(_ channelID: ID) async throws -> MembershipChain {
        let after = chains[channelID]?.version ?? 0
        let request = Request.channelMembership(.init(channelID: channelID, afterVersion: after > 0 ? after : nil))
        guard case .channelMembership(let result) = try await send(request) else {
            throw ClientError.unexpectedReply("channel.membership")
        }
        if after == 0, result.statements.isEmpty {
            throw refuse(VerificationFailure(.membershipChain, channelID: channelID, "the relay returned no statements"))
        }
        return try await verify(result.statements, in: channelID)
    }

    /// The verified chain, refreshed only when it does not reach `version` yet.
    func verifiedChain(_ channelID: ID, reaching version: Int) async throws -> MembershipChain {
        if let chain = chains[channelID], chain.version >= version { return chain }
        return try await refreshChain(channelID)
    }

    /// Verifies `statements` as the continuation of the channel's chain, with the signers'
    /// pinned keys, and keeps the longer chain.
    func verify(_ statements: [MembershipStatement], in channelID: ID) async throws -> MembershipChain {
        var keys: [ID: RSAPublicKey] = [:]
        for signer in MembershipChain.signers(of: statements) {
            do {
                keys[signer] = try await pinnedKey(signer)
            } catch let error as ClientError where error.code == .notFound {
                continue   // an unknown signer: its signature cannot verify
            }
        }
        // Read the chain only now: another task may have extended it meanwhile.
        var chain = chains[channelID] ?? MembershipChain(channelID: channelID)
        do {
            try chain.extend(with: statements) { signer, text, sig in
                keys[signer]?.isValidSignature(sig, for: text) ?? false
            }
        } catch {
            throw refuse(error)
        }
        if chain.version >= (chains[channelID]?.version ?? 0) { chains[channelID] = chain }
        return chain
    }
}
