/// The checks made on a signed membership statement (wire-protocol §5 and §10
/// "Channels"): by the relay before applying it, and by clients verifying a chain before
/// they trust a member list — the same code on both sides. Pure: no database, no clock,
/// no I/O — the caller passes in the previous statement, the time (the relay) or nothing
/// (a client checking stored statements), and a closure that verifies signatures (the
/// relay with the stored public keys, a client with its pinned ones). Safe on any thread.
///
/// Order of checks (the first failing one answers):
/// - `channel.create` (version 1): version 1, empty `prev`, an owner, no duplicate
///   members, 1...1000 members (`bad_request`); requester = signer, signer = owner
///   (`forbidden`); owner among the members (`bad_request`); `ts` in the window
///   (`bad_timestamp`); signature (`forbidden`).
/// - `channel.add` / `channel.remove` (version n+1): channel not closed (`forbidden`);
///   version = n+1 — a stale version whose change lost a race is `bad_request` too, the
///   statement "does not follow the rules" (§10) and the client re-reads the chain;
///   `prev` = hash of version n; no duplicates; exactly one member added (add) or removed
///   (remove); the request's `user_id` is that member; at most 1000 members
///   (`bad_request`); requester = signer, signer = owner of version n or, for a leave,
///   the leaving member (`forbidden`); `owner_id` unchanged, or on the owner's leave
///   the expected successor, or empty when nobody remains (`bad_request`); `ts` not
///   earlier than version n's (`bad_request`); `ts` in the window (`bad_timestamp`);
///   signature (`forbidden`).
///
/// Existence of the users named is the handler's business (`not_found`), checked after
/// these rules pass.
public enum MembershipRules {
    /// What the request asks for.
    public enum Change: Equatable, Sendable {
        /// `channel.create`: statement version 1.
        case create
        /// `channel.add` with the request's `user_id`.
        case add(ID)
        /// `channel.remove` with the request's `user_id`.
        case remove(ID)
    }

    /// Signature check with the signer's stored public key: (signer, signed text, sig).
    public typealias Verifier = (_ signer: ID, _ text: [UInt8], _ sig: [UInt8]) -> Bool

    /// Everything the rules look at besides the statement itself.
    public struct Context: Sendable {
        public var channelID: ID
        /// The authenticated user making the request (a client checking a stored chain
        /// passes the statement's signer).
        public var requester: ID
        public var change: Change
        /// The current statement (version n); nil for `channel.create`.
        public var previous: MembershipStatement?
        /// SHA-256 of `previous`'s signed text (what the new `prev` must be).
        public var previousTextHash: [UInt8] = []
        /// When the current owner leaves: the member who must take over (the earliest
        /// latest join, ties broken by the smaller id). Ignored otherwise.
        public var successor: ID?
        /// The relay's clock, unix seconds; nil skips the `ts` window, which applies only
        /// when a statement is submitted (a client checking stored statements has no
        /// "time of submission" to compare with).
        public var now: Int?
        /// Inclusive ± window for `ts`, seconds.
        public var windowSeconds: Int
        public var maxMembers: Int = Limits.maxMembers

        public init(
            channelID: ID, requester: ID, change: Change, previous: MembershipStatement? = nil,
            previousTextHash: [UInt8] = [], successor: ID? = nil, now: Int?, windowSeconds: Int,
            maxMembers: Int = Limits.maxMembers
        ) {
            self.channelID = channelID
            self.requester = requester
            self.change = change
            self.previous = previous
            self.previousTextHash = previousTextHash
            self.successor = successor
            self.now = now
            self.windowSeconds = windowSeconds
            self.maxMembers = maxMembers
        }
    }

    /// A statement that passed every rule, with what applying it means.
    public struct Accepted: Equatable, Sendable {
        public var statement: MembershipStatement
        /// The member added or removed; nil for a create.
        public var subject: ID?
        /// `.added` or `.removed`; nil for a create.
        public var action: Event.Member.Action?
        /// The owner before the change (nil for a create).
        public var previousOwner: ID?
        /// The owner after the change; nil once the last member left.
        public var owner: ID?
        /// The last member left: the channel is closed for good.
        public var closesChannel: Bool
        /// True when the owner changes hands (the owner left, someone remains).
        public var ownerChanged: Bool { previousOwner != nil && owner != nil && previousOwner != owner }
    }

    /// Why a statement was refused, with the contract's error code.
    public struct Rejection: Error, Equatable, Sendable {
        public var code: ErrorCode
        public var message: String
        public init(_ code: ErrorCode, _ message: String) {
            self.code = code
            self.message = message
        }
    }

    /// Applies the rules of §5/§10 to `statement`.
    public static func check(_ statement: MembershipStatement, _ context: Context, verify: Verifier) -> Result<Accepted, Rejection> {
        do {
            switch context.change {
            case .create:
                return .success(try checkFirst(statement, context, verify: verify))
            case .add(let user):
                return .success(try checkChange(statement, context, subject: user, adding: true, verify: verify))
            case .remove(let user):
                return .success(try checkChange(statement, context, subject: user, adding: false, verify: verify))
            }
        } catch let rejection as Rejection {
            return .failure(rejection)
        } catch {
            return .failure(Rejection(.badRequest, "membership statement refused"))
        }
    }

    // MARK: - Version 1

    private static func checkFirst(_ statement: MembershipStatement, _ context: Context, verify: Verifier) throws -> Accepted {
        guard context.previous == nil else { throw Rejection(.badRequest, "the channel already has a membership chain") }
        guard statement.version == 1 else { throw Rejection(.badRequest, "membership.version must be 1 for a new channel") }
        guard statement.prev.isEmpty else { throw Rejection(.badRequest, "membership.prev must be empty for version 1") }
        guard let owner = statement.ownerID else { throw Rejection(.badRequest, "membership.owner_id is required") }
        try requireNoDuplicates(statement.members)
        guard (1...context.maxMembers).contains(statement.members.count) else {
            throw Rejection(.badRequest, "a channel has 1 to \(context.maxMembers) members")
        }
        guard statement.signerID == context.requester else {
            throw Rejection(.forbidden, "the requester must be the statement's signer")
        }
        guard statement.signerID == owner else { throw Rejection(.forbidden, "version 1 is signed by its owner") }
        guard statement.members.contains(owner) else { throw Rejection(.badRequest, "the creator must be a member") }
        try requireWindow(statement.ts, context)
        try requireSignature(statement, context, verify)
        return Accepted(statement: statement, subject: nil, action: nil, previousOwner: nil, owner: owner, closesChannel: false)
    }

    // MARK: - Version n+1

    private static func checkChange(
        _ statement: MembershipStatement, _ context: Context, subject: ID, adding: Bool, verify: Verifier
    ) throws -> Accepted {
        guard let previous = context.previous else { throw Rejection(.badRequest, "the channel has no membership chain") }
        // A closed channel has no members, so requests stop at `not_member` before this;
        // should one get here anyway, nobody may sign for it.
        guard let previousOwner = previous.ownerID, !previous.members.isEmpty else {
            throw Rejection(.forbidden, "the channel is closed")
        }
        guard statement.version == previous.version + 1 else {
            throw Rejection(.badRequest, "membership.version must be \(previous.version + 1)")
        }
        guard statement.prev == context.previousTextHash else {
            throw Rejection(.badRequest, "membership.prev is not the hash of version \(previous.version)")
        }
        try requireNoDuplicates(statement.members)

        let before = Set(previous.members), after = Set(statement.members)
        let added = after.subtracting(before), removed = before.subtracting(after)
        if adding {
            guard added.count == 1, removed.isEmpty else {
                throw Rejection(.badRequest, before.contains(subject)
                                ? "user_id is already a member" : "channel.add must add exactly one member")
            }
            guard added.first == subject else {
                throw Rejection(.badRequest, before.contains(subject)
                                ? "user_id is already a member" : "user_id is not the member the statement adds")
            }
            guard after.count <= context.maxMembers else {
                throw Rejection(.badRequest, "a channel has at most \(context.maxMembers) members")
            }
        } else {
            guard removed.count == 1, added.isEmpty else {
                throw Rejection(.badRequest, before.contains(subject)
                                ? "channel.remove must remove exactly one member" : "user_id is not a member")
            }
            guard removed.first == subject else {
                throw Rejection(.badRequest, before.contains(subject)
                                ? "user_id is not the member the statement removes" : "user_id is not a member")
            }
        }

        guard statement.signerID == context.requester else {
            throw Rejection(.forbidden, "the requester must be the statement's signer")
        }
        let leaving = !adding && subject == statement.signerID
        guard leaving || statement.signerID == previousOwner else {
            throw Rejection(.forbidden, "only the owner of version \(previous.version) may sign this change")
        }

        let newOwner: ID?
        if !adding && subject == previousOwner {
            if statement.members.isEmpty {
                guard statement.ownerID == nil else {
                    throw Rejection(.badRequest, "the last member's statement has an empty owner_id")
                }
                newOwner = nil
            } else {
                guard let successor = context.successor, statement.ownerID == successor else {
                    throw Rejection(.badRequest, "owner_id must name the longest-standing member")
                }
                newOwner = successor
            }
        } else {
            guard statement.ownerID == previousOwner else {
                throw Rejection(.badRequest, "owner_id changes only when the owner leaves")
            }
            newOwner = previousOwner
        }

        guard statement.ts >= previous.ts else {
            throw Rejection(.badRequest, "membership.ts is earlier than version \(previous.version)'s")
        }
        try requireWindow(statement.ts, context)
        try requireSignature(statement, context, verify)
        return Accepted(
            statement: statement, subject: subject, action: adding ? .added : .removed,
            previousOwner: previousOwner, owner: newOwner, closesChannel: statement.members.isEmpty)
    }

    // MARK: - Owner succession

    /// The member who takes over when `leaving` (the owner) leaves the channel whose
    /// chain is `chain` (ascending, from version 1): the longest-standing remaining member
    /// of the last statement — the one whose latest join came in the earliest version
    /// (everyone in version 1 joined together), ties broken by the smaller user id. This
    /// is the relay's rule (earliest latest `joined_at`, then the smaller id) read off the
    /// signed chain, so a client can name the successor without trusting the relay.
    /// Nil when nobody else remains.
    public static func successor(in chain: [MembershipStatement], leaving: ID) -> ID? {
        guard let last = chain.last else { return nil }
        var joinedIn: [ID: Int] = [:]
        var previous: Set<ID> = []
        for statement in chain {
            let current = Set(statement.members)
            for member in current.subtracting(previous) { joinedIn[member] = statement.version }
            previous = current
        }
        return last.members
            .filter { $0 != leaving }
            .min { lhs, rhs in
                let (l, r) = (joinedIn[lhs] ?? Int.max, joinedIn[rhs] ?? Int.max)
                return l != r ? l < r : lhs < rhs
            }
    }

    // MARK: - Shared checks

    private static func requireNoDuplicates(_ members: [ID]) throws {
        guard Set(members).count == members.count else {
            throw Rejection(.badRequest, "membership.members has duplicates")
        }
    }

    /// `ts` within ±window of the relay's clock, inclusive.
    private static func requireWindow(_ ts: Int, _ context: Context) throws {
        guard let now = context.now else { return }
        let (difference, overflow) = ts.subtractingReportingOverflow(now)
        guard !overflow, difference.magnitude <= UInt(max(context.windowSeconds, 0)) else {
            throw Rejection(.badTimestamp, "membership.ts is outside ±\(context.windowSeconds) s of the relay's clock")
        }
    }

    private static func requireSignature(_ statement: MembershipStatement, _ context: Context, _ verify: Verifier) throws {
        guard verify(statement.signerID, statement.signedText(channelID: context.channelID), statement.sig) else {
            throw Rejection(.forbidden, "membership.sig does not verify")
        }
    }
}
