import Foundation
import ParleyCrypto
import ParleyProtocol
import ParleyServer
import ParleyStore
import ParleyTestSupport
import XCTest

/// Client key pairs for the account tests; slow to generate, so made once per process.
enum AccountKeys {
    static let first = Result { try RSAPrivateKey(generating: .bits2048) }
    static let second = Result { try RSAPrivateKey(generating: .bits2048) }
}

/// Thrown when a reply is not the frame a test expected (the test has already failed).
struct AccountTestFailure: Error {}

/// The invalid keys of the independent fixture (Tests/Interop/Fixtures/interop.json).
enum AccountFixture {
    struct InvalidKey {
        var name: String
        var spki: [UInt8]
    }

    static func invalidKeys() throws -> [InvalidKey] {
        let url = TestDatabase.repositoryRoot.appendingPathComponent("Tests/Interop/Fixtures/interop.json")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any]
        let list = json?["invalid_keys"] as? [[String: Any]] ?? []
        return try list.map { entry in
            InvalidKey(name: entry["name"] as? String ?? "?",
                       spki: try Base64.decode(entry["spki_der_b64"] as? String ?? ""))
        }
    }

    /// SPKIs of accepted sizes other than 2048 bits.
    static func otherSizeKeys() throws -> [[UInt8]] {
        let url = TestDatabase.repositoryRoot.appendingPathComponent("Tests/Interop/Fixtures/interop.json")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any]
        let list = json?["other_sizes"] as? [[String: Any]] ?? []
        return try list.map { try Base64.decode($0["spki_der_b64"] as? String ?? "") }
    }
}

/// What a client holds after a successful challenge.
struct AccountSession {
    var userID: ID
    var username: String
    /// The opaque session string (base64url of 32 bytes).
    var session: String
    var sessionExpiresAt: Int
    /// Only after a signup.
    var passkey: String?
    var effects: [Effect]

    var token: [UInt8] { (try? Base64.decodeURL(session)) ?? [] }
    var sessionHash: [UInt8] { SHA256.hash(token) }
}

/// One freshly migrated database, its connection and a relay service over it; requests
/// run as the worker thread would run them.
final class AccountHarness {
    let connectionString: String
    let db: PostgresConnection
    let service: RelayService
    let nodeID = ID.random()

    init(configuration: RelayConfiguration = RelayConfiguration()) throws {
        connectionString = try TestDatabase.makeDatabase()
        db = try PostgresConnection(connectionString: connectionString)
        service = RelayService(configuration: configuration)
    }

    /// An unauthenticated connection number `number` of this relay node.
    func connection(_ number: UInt64) -> RequestContext {
        RequestContext(connectionID: number, nodeID: nodeID)
    }

    /// The connection `number`, authenticated with `session`.
    func connection(_ number: UInt64, signedInAs session: AccountSession) -> RequestContext {
        RequestContext(connectionID: number, nodeID: nodeID, userID: session.userID, sessionHash: session.sessionHash)
    }

    func send(_ request: Request, id: String = "r1", on context: RequestContext) -> Outcome {
        service.handle(request, id: id, context: context, on: db)
    }

    /// The success result of `outcome`; fails the test (and throws) on anything else.
    func result(_ outcome: Outcome, re: String = "r1", file: StaticString = #filePath, line: UInt = #line) throws -> Response {
        let frame = try ServerFrame.decode(outcome.reply)
        guard case .result(let replyRe, let response) = frame else {
            XCTFail("expected a result, got \(String(decoding: outcome.reply, as: UTF8.self))", file: file, line: line)
            throw AccountTestFailure()
        }
        XCTAssertEqual(replyRe, re, file: file, line: line)
        return response
    }

    /// The error of `outcome`; fails the test (and throws) on anything else.
    func error(_ outcome: Outcome, file: StaticString = #filePath, line: UInt = #line) throws -> ErrorFrame {
        guard case .error(let frame) = try ServerFrame.decode(outcome.reply) else {
            XCTFail("expected an error, got \(String(decoding: outcome.reply, as: UTF8.self))", file: file, line: line)
            throw AccountTestFailure()
        }
        return frame
    }

    /// Asserts that `outcome` is an error with `code`, `re` "r1" and no effects.
    func assertError(_ outcome: Outcome, _ code: ErrorCode, _ message: String = "",
                     file: StaticString = #filePath, line: UInt = #line) {
        do {
            let frame = try error(outcome, file: file, line: line)
            XCTAssertEqual(frame.code, code, message, file: file, line: line)
            XCTAssertEqual(frame.re, "r1", message, file: file, line: line)
            XCTAssertTrue(outcome.effects.isEmpty, "an error has no effects \(message)", file: file, line: line)
        } catch {
            XCTFail("undecodable reply \(message): \(error)", file: file, line: line)
        }
    }

    /// A `signup` or `login` result's challenge.
    func issued(_ outcome: Outcome, file: StaticString = #filePath, line: UInt = #line) throws -> Response.ChallengeIssued {
        switch try result(outcome, file: file, line: line) {
        case .signup(let issued), .login(let issued): return issued
        default:
            XCTFail("expected signup or login, got \(String(decoding: outcome.reply, as: UTF8.self))", file: file, line: line)
            throw AccountTestFailure()
        }
    }

    /// The answer a client computes for `issued` with `key`.
    func answer(_ issued: Response.ChallengeIssued, with key: RSAPrivateKey) throws -> [UInt8] {
        try Base64.decode(ChallengeAnswer.compute(secret: key.unwrap(issued.challenge)))
    }

    func answerChallenge(_ issued: Response.ChallengeIssued, with key: RSAPrivateKey, on context: RequestContext) throws -> Outcome {
        send(.challenge(Request.Challenge(challengeID: issued.challengeID, answer: try answer(issued, with: key))), on: context)
    }

    /// The session of a successful `challenge` outcome.
    func session(_ outcome: Outcome, file: StaticString = #filePath, line: UInt = #line) throws -> AccountSession {
        guard case .challenge(let reply) = try result(outcome, file: file, line: line) else {
            XCTFail("expected challenge, got \(String(decoding: outcome.reply, as: UTF8.self))", file: file, line: line)
            throw AccountTestFailure()
        }
        return AccountSession(userID: reply.userID, username: reply.username, session: reply.session,
                              sessionExpiresAt: reply.sessionExpiresAt, passkey: reply.passkey, effects: outcome.effects)
    }

    /// signup + challenge on connection `number`.
    func signUp(_ username: String, key: RSAPrivateKey, connection number: UInt64 = 1,
                file: StaticString = #filePath, line: UInt = #line) throws -> AccountSession {
        let context = connection(number)
        let signup = send(.signup(Request.Signup(username: username, publicKeyDER: key.publicKey.spkiDER)), on: context)
        let issued = try issued(signup, file: file, line: line)
        return try session(answerChallenge(issued, with: key, on: context), file: file, line: line)
    }

    /// Every row of the account tables as PostgreSQL prints it (bytea in hex).
    func accountRowsText() throws -> String {
        var text = ""
        for table in ["users", "sessions", "challenges"] {
            for row in try db.execute("SELECT t::text FROM \(table) t").rows {
                text += try row.string(0) + "\n"
            }
        }
        return text
    }
}

func accountHex(_ bytes: [UInt8]) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}

/// Lets test threads hand results back to the test.
final class AccountLockedList<Element: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var elements: [Element] = []   // guarded by lock

    func append(_ element: Element) { lock.withLock { elements.append(element) } }
    var all: [Element] { lock.withLock { elements } }
}
