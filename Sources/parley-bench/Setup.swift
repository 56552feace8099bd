import Foundation
import ParleyClient
import ParleyCrypto
import ParleyProtocol

// Setup, not measured: key pairs, accounts (signup → challenge), channels with a signed
// membership statement v1 naming every member, and one channel key wrapped for each
// member. It runs over ParleyClient's WebSocketConnection, one request at a time per
// connection, many connections in parallel.

enum BenchError: Error, CustomStringConvertible {
    case setup(String)

    var description: String {
        switch self {
        case .setup(let detail): return detail
        }
    }
}

/// A signed-up user: who it is, its session, and which pooled key pair it holds.
struct Account: Sendable {
    var userID: ID
    var session: String
    var keyIndex: Int
}

/// A channel made for the run, and its key (nil when nobody sends in it).
struct ChannelSetup: Sendable {
    var id: ID
    var keyID: ID?
}

/// One setup connection: a request, then its result (events in between are skipped).
/// Used by one task at a time.
struct SetupConnection {
    private let connection: WebSocketConnection
    private var frames: AsyncStream<WebSocketConnection.Incoming>.AsyncIterator
    private var lastID = 0

    init(url: URL) async throws {
        connection = WebSocketConnection(url: url)
        frames = connection.incoming.makeAsyncIterator()
        do {
            try await connection.open(timeout: 30)
        } catch {
            throw BenchError.setup("cannot connect to \(url.absoluteString): \(error)")
        }
    }

    /// Sends `request` and returns its result; a refusal or a lost connection throws.
    /// `unavailable` and `internal` are retried a few times after their `retry_after_ms`.
    mutating func send(_ request: Request) async throws -> Response {
        var retries = 3
        while true {
            switch try await attempt(request) {
            case .success(let response):
                return response
            case .failure(let error) where error.code.isRetryable && error.code != .rateLimited && retries > 0:
                retries -= 1
                try await Task.sleep(nanoseconds: UInt64(max(100, error.retryAfterMs ?? 100)) * 1_000_000)
            case .failure(let error):
                let hint = error.code == .rateLimited ? " (run the relay with --rate-limits off)" : ""
                throw BenchError.setup("\(request.type.rawValue) refused: \(error.code.rawValue): \(error.message)\(hint)")
            }
        }
    }

    private mutating func attempt(_ request: Request) async throws -> Result<Response, ErrorFrame> {
        lastID += 1
        let id = "setup-\(lastID)"
        connection.send(RequestFrame(id: id, request: request).encode())
        while let incoming = await frames.next() {
            switch incoming {
            case .text(let bytes):
                switch try? ServerFrame.decode(bytes) {
                case .result(let re, let response)? where re == id:
                    return .success(response)
                case .error(let error)? where error.re == id:
                    return .failure(error)
                default:
                    continue
                }
            case .closed(let code, let reason):
                throw BenchError.setup("the relay closed a setup connection (\(code.map(String.init) ?? "no code") \(reason))")
            }
        }
        throw BenchError.setup("the relay closed a setup connection")
    }

    func close() { connection.close() }
}

enum Setup {
    /// Generates `count` RSA-2048 key pairs on every core.
    static func makeKeys(count: Int) throws -> [RSAPrivateKey] {
        let results = KeyResults(count: count)
        DispatchQueue.concurrentPerform(iterations: count) { index in
            results.set(index, Result { try RSAPrivateKey(generating: .bits2048) })
        }
        return try results.values()
    }

    /// Signs up `count` users named `<prefix><index>`, user i holding key i mod keys.count.
    static func signUp(count: Int, prefix: String, keys: [RSAPrivateKey], url: URL, concurrency: Int) async throws -> [Account] {
        try await inParallel(count: count, concurrency: concurrency) { index in
            let keyIndex = index % keys.count
            let key = keys[keyIndex]
            var connection = try await SetupConnection(url: url)
            defer { connection.close() }
            guard case .signup(let issued) = try await connection.send(
                .signup(Request.Signup(username: "\(prefix)\(index)", publicKeyDER: key.publicKey.spkiDER)))
            else { throw BenchError.setup("signup: unexpected result") }
            let secret = try key.unwrap(issued.challenge)
            let answer = SHA256.hash(SignedText.challengeAnswerInput(secret: secret))
            guard case .challenge(let result) = try await connection.send(
                .challenge(Request.Challenge(challengeID: issued.challengeID, answer: answer)))
            else { throw BenchError.setup("challenge: unexpected result") }
            return Account(userID: result.userID, session: result.session, keyIndex: keyIndex)
        }
    }

    /// Creates a channel whose statement v1 names `members` (the first is the owner and
    /// signs it) and, with `withKey`, stores a first channel key wrapped for each member.
    static func createChannel(name: String, members: [Account], keys: [RSAPrivateKey], withKey: Bool, url: URL) async throws -> ChannelSetup {
        guard let owner = members.first else { throw BenchError.setup("a channel needs a member") }
        let ownerKey = keys[owner.keyIndex]
        var connection = try await SetupConnection(url: url)
        defer { connection.close() }
        _ = try await connection.send(.auth(Request.Auth(session: owner.session)))

        let channelID = ID.random()
        var statement = MembershipStatement(
            version: 1, prev: [], ts: Clock.unixSeconds(), ownerID: owner.userID,
            members: members.map(\.userID), signerID: owner.userID, sig: [])
        statement.sig = try ownerKey.signature(for: statement.signedText(channelID: channelID))
        _ = try await connection.send(.channelCreate(Request.ChannelCreate(channelID: channelID, name: name, membership: statement)))
        guard withKey else { return ChannelSetup(id: channelID, keyID: nil) }

        // Wrapped once per pooled key pair: members sharing a key pair get the same copy.
        let channelKey = try SymmetricKey.generate()
        var wrappedByKey: [Int: [UInt8]] = [:]
        var wrapped: [WrappedKey] = []
        for member in members {
            if wrappedByKey[member.keyIndex] == nil {
                wrappedByKey[member.keyIndex] = try keys[member.keyIndex].publicKey.wrap(channelKey.bytes)
            }
            wrapped.append(WrappedKey(userID: member.userID, encryptedKey: wrappedByKey[member.keyIndex]!))
        }
        var record = Request.Keys(
            channelID: channelID, keyID: ID.random(), previousKeyID: nil, membershipVersion: 1,
            digest: SHA256.hash(channelKey.bytes), sig: [], encryptedKeys: wrapped)
        record.sig = try ownerKey.signature(for: record.signedText)
        _ = try await connection.send(.keys(record))
        return ChannelSetup(id: channelID, keyID: record.keyID)
    }

    /// Runs `body(0..<count)` with at most `concurrency` at once; results in index order.
    static func inParallel<T: Sendable>(
        count: Int, concurrency: Int, _ body: @escaping @Sendable (Int) async throws -> T
    ) async throws -> [T] {
        try await withThrowingTaskGroup(of: (Int, T).self) { group in
            var results = [T?](repeating: nil, count: count)
            var next = 0
            while next < min(count, concurrency) {
                let index = next
                group.addTask { (index, try await body(index)) }
                next += 1
            }
            while let (index, value) = try await group.next() {
                results[index] = value
                if next < count {
                    let index = next
                    group.addTask { (index, try await body(index)) }
                    next += 1
                }
            }
            return results.map { $0! }
        }
    }
}

/// Results of the parallel key generation, one slot per index.
private final class KeyResults: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [Result<RSAPrivateKey, Error>?]   // guarded by lock

    init(count: Int) { results = Array(repeating: nil, count: count) }

    func set(_ index: Int, _ result: Result<RSAPrivateKey, Error>) { lock.withLock { results[index] = result } }

    func values() throws -> [RSAPrivateKey] { try lock.withLock { try results.map { try $0!.get() } } }
}
