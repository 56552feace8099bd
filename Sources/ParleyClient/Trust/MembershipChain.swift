import ParleyCrypto
import ParleyProtocol

/// A channel's membership chain as far as this client verified it (§5): every statement
/// from version 1 checked with `MembershipRules` — the relay's own rules — and each
/// signature with the signer's pinned key. Only a member list read from here is trusted,
/// in particular before wrapping a channel key for anyone. Pure value type.
public struct MembershipChain: Sendable, Equatable {
    public let channelID: ID
    /// Verified statements, ascending from version 1.
    public private(set) var statements: [MembershipStatement] = []
    /// SHA-256 of the newest statement's signed text: the next statement's `prev`.
    public private(set) var headHash: [UInt8] = []

    public init(channelID: ID) {
        self.channelID = channelID
    }

    /// The newest verified statement.
    public var latest: MembershipStatement? { statements.last }
    /// The newest verified version, 0 before any.
    public var version: Int { statements.last?.version ?? 0 }
    /// The members of the newest verified statement (sorted).
    public var members: [ID] { statements.last?.members ?? [] }
    /// The owner of the newest verified statement.
    public var owner: ID? { statements.last?.ownerID }

    /// The verified statement of `version`.
    public func statement(version: Int) -> MembershipStatement? {
        guard version >= 1, version <= statements.count else { return nil }
        return statements[version - 1]
    }

    /// The member who takes over when the owner `leaving` leaves (the relay's rule).
    public func successor(leaving: ID) -> ID? {
        MembershipRules.successor(in: statements, leaving: leaving)
    }

    /// The signers whose keys `extend(with:verify:)` needs for `statements`.
    public static func signers(of statements: [MembershipStatement]) -> Set<ID> {
        Set(statements.map(\.signerID))
    }

    /// Verifies `more` (ascending) as the continuation of the chain and appends them.
    /// Statements at or below the verified version must be exactly the ones already
    /// verified (anything else is a fork); the rest must follow without a gap. On a
    /// failure nothing is appended and the failure says which version and why.
    public mutating func extend(
        with more: [MembershipStatement], verify: MembershipRules.Verifier
    ) throws(VerificationFailure) {
        var chain = self
        for statement in more.sorted(by: { $0.version < $1.version }) {
            try chain.append(statement, verify: verify)
        }
        self = chain
    }

    private mutating func append(_ statement: MembershipStatement, verify: MembershipRules.Verifier) throws(VerificationFailure) {
        if statement.version >= 1, statement.version <= version {
            guard statements[statement.version - 1] == statement else {
                throw failure(statement, "differs from the version already verified (a fork)")
            }
            return
        }
        guard statement.version == version + 1 else {
            throw failure(statement, "version \(statement.version) does not follow version \(version)")
        }
        let context: MembershipRules.Context
        if let previous = latest {
            guard let change = Self.change(from: previous, to: statement) else {
                throw failure(statement, "does not add or remove exactly one member")
            }
            var successor: ID?
            if case .remove(let subject) = change, subject == previous.ownerID {
                successor = MembershipRules.successor(in: statements, leaving: subject)
            }
            context = MembershipRules.Context(
                channelID: channelID, requester: statement.signerID, change: change, previous: previous,
                previousTextHash: headHash, successor: successor, now: nil, windowSeconds: 0)
        } else {
            context = MembershipRules.Context(
                channelID: channelID, requester: statement.signerID, change: .create, now: nil, windowSeconds: 0)
        }
        switch MembershipRules.check(statement, context, verify: verify) {
        case .success:
            statements.append(statement)
            headHash = SHA256.hash(statement.signedText(channelID: channelID))
        case .failure(let rejection):
            throw failure(statement, rejection.message)
        }
    }

    /// The change from `previous` to `next`, when it is exactly one member.
    static func change(from previous: MembershipStatement, to next: MembershipStatement) -> MembershipRules.Change? {
        let before = Set(previous.members), after = Set(next.members)
        let added = after.subtracting(before), removed = before.subtracting(after)
        if added.count == 1, removed.isEmpty, let user = added.first { return .add(user) }
        if removed.count == 1, added.isEmpty, let user = removed.first { return .remove(user) }
        return nil
    }

    private func failure(_ statement: MembershipStatement, _ why: String) -> VerificationFailure {
        VerificationFailure(.membershipChain, channelID: channelID, "version \(statement.version): \(why)")
    }

    // MARK: - Making statements

    /// Version 1 of a new channel: `owner` and `members` (the owner added when missing),
    /// unsigned (`sig` empty).
    public static func firstStatement(owner: ID, members: [ID], ts: Int) -> MembershipStatement {
        var all = Set(members)
        all.insert(owner)
        return MembershipStatement(
            version: 1, prev: [], ts: ts, ownerID: owner, members: Array(all), signerID: owner, sig: [])
    }

    /// The next statement after the verified head, adding or removing `user`, signed by
    /// `signer` (unsigned here: `sig` empty). On the owner's own leave the new owner is the
    /// longest-standing remaining member, or none when nobody remains. `ts` never goes
    /// below the head's.
    public func nextStatement(adding: Bool, user: ID, signer: ID, now: Int) throws(ClientError) -> MembershipStatement {
        guard let head = latest else { throw ClientError.invalidRequest("the channel's membership chain is unknown") }
        guard head.ownerID != nil, !head.members.isEmpty else { throw ClientError.invalidRequest("the channel is closed") }
        var members = Set(head.members)
        if adding {
            guard members.insert(user).inserted else { throw ClientError.invalidRequest("\(user) is already a member") }
        } else {
            guard members.remove(user) != nil else { throw ClientError.invalidRequest("\(user) is not a member") }
        }
        var owner = head.ownerID
        if !adding, user == head.ownerID {
            owner = members.isEmpty ? nil : successor(leaving: user)
        }
        return MembershipStatement(
            version: head.version + 1, prev: headHash, ts: max(now, head.ts), ownerID: owner,
            members: Array(members), signerID: signer, sig: [])
    }
}
