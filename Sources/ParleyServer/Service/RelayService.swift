import Foundation
import ParleyCrypto
import ParleyProtocol
import ParleyStore

/// Executes requests against PostgreSQL. Runs on database worker threads, each call with
/// the worker's own connection; holds no mutable state, so one instance serves them all.
///
/// Subscriptions are the exception: their registration lives on the service thread
/// (`SubscriptionRegistry`); the worker side is `startSubscriptions` and `replay`.
public final class RelayService: Sendable {
    public let configuration: RelayConfiguration
    let log: Log

    public init(configuration: RelayConfiguration, log: Log? = nil) {
        self.configuration = configuration
        self.log = log ?? Log(level: configuration.logLevel, format: configuration.logFormat)
    }

    /// Runs one request (already decoded and authenticated as the contract requires) and
    /// returns the reply and its effects. Database outages become `unavailable`; nothing
    /// here throws or traps on client input.
    public func handle(_ request: Request, id: String, context: RequestContext, on db: PostgresConnection) -> Outcome {
        let handler = Handler(re: id, context: context, db: db, configuration: configuration)
        do {
            switch request {
            case .signup(let signup): return try handler.signup(signup)
            case .login(let login): return try handler.login(login)
            case .challenge(let challenge): return try handler.challenge(challenge)
            case .auth(let auth): return try handler.auth(auth)
            case .logout: return try handler.logout()
            case .user(let user): return try handler.user(user)
            case .channelCreate(let create): return try handler.channelCreate(create)
            case .channels: return try handler.channels()
            case .channelMembers(let members): return try handler.channelMembers(members)
            case .channelMembership(let membership): return try handler.channelMembership(membership)
            case .channelAdd(let change): return try handler.channelChange(change, adding: true)
            case .channelRemove(let change): return try handler.channelChange(change, adding: false)
            case .key(let key): return try handler.key(key)
            case .keys(let keys): return try handler.keys(keys)
            case .message(let message):
                return send([MessageSend(id: id, context: context, request: message)], on: db)[0]
            case .messages(let messages): return try handler.messages(messages)
            case .subscribe, .unsubscribe, .ping:
                // Answered by the service thread (SubscriptionRegistry, clock).
                return handler.fail(.internal, "handled by the service thread")
            }
        } catch let error as StoreError where error.isTransient {
            return Outcome(ErrorFrame(re: id, code: .unavailable, message: "database unavailable, retry",
                                      retryAfterMs: 1000))
        } catch let error as ErrorFrame {
            return Outcome(error)
        } catch {
            return internalError(error, request: request, id: id, context: context)
        }
    }

    /// `internal`, logged. A store error's description names its code and SQLSTATE only,
    /// never row values; of any other error only its type is logged.
    func internalError(_ error: any Error, request: Request, id: String, context: RequestContext) -> Outcome {
        let cause = (error as? StoreError)?.description ?? String(describing: type(of: error))
        log.error("request.internal_error", "request failed inside the relay",
                  ["type": .string(request.type.rawValue), "conn": .int(Int(context.connectionID)),
                   "error": .string(cause)])
        return Outcome(ErrorFrame(re: id, code: .internal, message: "internal error, retry", retryAfterMs: 1000))
    }
}

/// One request's view of the world; a value made per call on the worker thread.
/// Handlers are written as extensions of it, one file per area (accounts, channels,
/// keys, messages, subscriptions).
struct Handler {
    let re: String
    let context: RequestContext
    let db: PostgresConnection
    let configuration: RelayConfiguration

    /// The authenticated user; handlers that need one are only reached when there is one.
    var userID: ID {
        get throws {
            guard let user = context.userID else { throw ErrorFrame(re: re, code: .unauthenticated, message: "authenticate first") }
            return user
        }
    }

    func ok(_ response: Response, effects: [Effect] = []) -> Outcome {
        Outcome(reply: ResultFrame(re: re, response: response).encode(), effects: effects)
    }

    func fail(_ code: ErrorCode, _ message: String) -> Outcome {
        Outcome(ErrorFrame(re: re, code: code, message: message))
    }

    /// An `ErrorFrame` to throw from deep inside a handler (caught by `RelayService.handle`).
    func error(_ code: ErrorCode, _ message: String) -> ErrorFrame {
        ErrorFrame(re: re, code: code, message: message)
    }

    /// Current unix seconds (for `ts` windows) and milliseconds.
    var nowSeconds: Int { Int(Date().timeIntervalSince1970) }
    var nowMillis: Int { Int(Date().timeIntervalSince1970 * 1000) }
}

extension SQLValue {
    /// An id as a uuid parameter.
    static func id(_ value: ID) -> SQLValue { .text(value.string) }
    static func id(_ value: ID?) -> SQLValue { value.map { .text($0.string) } ?? .null }
}

extension Row {
    /// A uuid column as a protocol id (PostgreSQL prints uuids lowercase and canonical).
    func id(_ column: Int) throws -> ID {
        guard let value = ID(try string(column)) else {
            throw StoreError(.decodingFailed, detail: "column \(column) is not a canonical uuid")
        }
        return value
    }

    func optionalID(_ column: Int) throws -> ID? {
        guard let text = try optionalString(column), !text.isEmpty else { return nil }
        guard let value = ID(text) else {
            throw StoreError(.decodingFailed, detail: "column \(column) is not a canonical uuid")
        }
        return value
    }
}

/// The requester's membership of a channel.
struct Membership {
    var role: Role
    /// The channel's `last_seq` at the member's latest join: history starts after it.
    var joinSeq: Int
    /// Unix milliseconds of the latest join.
    var joinedAt: Int
}

extension Handler {
    static let membershipQuery = PreparedStatement("member_of", """
        SELECT role, join_seq, (extract(epoch FROM joined_at) * 1000)::bigint
        FROM channel_members WHERE channel_id = $1 AND user_id = $2
        """)

    /// The requester's membership, or `not_member` — also for a channel that does not
    /// exist, so existence does not leak (§10). Checked before anything else of a request.
    func requireMember(_ channelID: ID) throws -> Membership {
        let user = try userID
        guard let row = try db.execute(Self.membershipQuery, [.id(channelID), .id(user)]).first else {
            throw error(.notMember, "not a member of this channel")
        }
        return Membership(role: Role(rawValue: try row.string(0)) ?? .member,
                          joinSeq: try row.int(1), joinedAt: try row.int(2))
    }
}
