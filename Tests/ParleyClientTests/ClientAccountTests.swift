import Foundation
@testable import ParleyClient
import ParleyCrypto
import ParleyProtocol
import ParleyTestSupport
import XCTest

/// Accounts, typed errors, timeouts, identity files and owner succession.
final class ClientAccountTests: XCTestCase {
    func testRequestsTimeOutWithATypedError() async throws {
        var configuration = ClientConfiguration()
        configuration.requestTimeout = 0.2
        let silent = SilentTransport()
        let client = ParleyClient(configuration: configuration) { silent }
        let started = Date()
        do {
            _ = try await client.signup(username: "nobody", key: TestKeys.key(0))
            XCTFail("a silent relay answered")
        } catch let error as ClientError {
            XCTAssertEqual(error, .timeout(.signup))
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        // Every request carried an id, and nothing but the signup was sent.
        let sent = silent.sent.current.map { try? RequestFrame.decode($0) }
        XCTAssertEqual(sent.count, 1)
        XCTAssertEqual(sent.first??.request.type, .signup)
        XCTAssertFalse(sent.first??.id.isEmpty ?? true)
        // Anything needing a session says so before touching the network.
        do {
            _ = try await client.channels()
            XCTFail("listed channels without a session")
        } catch let error as ClientError {
            XCTAssertEqual(error, .notAuthenticated)
        }
        await client.close()
    }

    func testRelayErrorsCarryTheContractsCode() async throws {
        let harness = try RelayHarness()
        let client = harness.client()
        do {
            _ = try await client.signup(username: "No Capitals!", key: TestKeys.key(0))
            XCTFail("accepted a bad username")
        } catch let error as ClientError {
            XCTAssertEqual(error.code, .invalidUsername)
        }
        let alice = try await harness.user("alice", key: 0)
        do {
            _ = try await alice.client.user(named: "nobody_here")
            XCTFail("found nobody")
        } catch let error as ClientError {
            XCTAssertEqual(error.code, .notFound)
        }
        let other = harness.client()
        do {
            _ = try await other.login(username: alice.identity.username, passkey: "AAAA", key: TestKeys.key(0))
            XCTFail("logged in with a wrong passkey")
        } catch let error as ClientError {
            XCTAssertEqual(error.code, .authFailed)
        }
        await harness.stop()
    }

    func testIdentityFileLoginAuthAndLogout() async throws {
        let harness = try RelayHarness()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("parley-id-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("alice.json")

        let alice = try await harness.user("alice", key: 0)
        XCTAssertNotNil(alice.identity.passkey)
        try IdentityFile.write(alice.identity, to: file, passphrase: "secret words")

        // A later run: the file's session is attached without a challenge.
        let restored = try IdentityFile.read(from: file, passphrase: "secret words")
        let again = harness.client()
        let authed = try await again.auth(identity: restored)
        XCTAssertEqual(authed.userID, alice.identity.userID)
        let channel = try await again.createChannel(name: "from file", members: [])
        let listed = try await again.channels()
        XCTAssertEqual(listed.map(\.channelID), [channel])

        // A new session with the passkey.
        let third = harness.client()
        let loggedIn = try await third.login(username: alice.identity.username, passkey: try XCTUnwrap(restored.passkey),
                                             key: restored.privateKey)
        XCTAssertEqual(loggedIn.userID, alice.identity.userID)
        XCTAssertNotEqual(loggedIn.session, alice.identity.session)

        // Logout ends that session everywhere; the first one still works.
        try await third.logout()
        do {
            _ = try await third.channels()
            XCTFail("still signed in after logout")
        } catch let error as ClientError {
            XCTAssertEqual(error, .notAuthenticated)
        }
        let fourth = harness.client()
        do {
            try await fourth.auth(session: loggedIn.session, key: restored.privateKey)
            XCTFail("a logged-out session still works")
        } catch let error as ClientError {
            XCTAssertEqual(error, .sessionEnded)
        }
        _ = try await again.channels()
        await harness.stop()
    }

    func testOwnerLeavesAndTheLongestStandingMemberTakesOver() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let carol = try await harness.user("carol", key: 2)
        let dave = try await harness.user("dave", key: 3)
        // v1 {alice, carol}; v2 adds bob: carol has stood longer, whatever the ids say.
        let channel = try await alice.client.createChannel(name: "succession", members: [carol.identity.userID])
        try await alice.client.add(userID: bob.identity.userID, to: channel)
        try await alice.client.leave(channel: channel)

        let chain = try await carol.client.membershipChain(of: channel)
        XCTAssertEqual(chain.version, 3)
        XCTAssertEqual(chain.owner, carol.identity.userID)
        XCTAssertEqual(Set(chain.members), Set([bob.identity.userID, carol.identity.userID]))
        let members = try await bob.client.members(of: channel)
        XCTAssertEqual(members.first { $0.role == .owner }?.userID, carol.identity.userID)

        // The new owner can add; the others cannot.
        do {
            try await bob.client.add(userID: dave.identity.userID, to: channel)
            XCTFail("a member added someone")
        } catch let error as ClientError {
            XCTAssertEqual(error.code, .forbidden)
        }
        try await carol.client.add(userID: dave.identity.userID, to: channel)
        try await dave.client.send(text: "hello from dave", to: channel)
        let page = try await bob.client.history(of: channel)
        XCTAssertEqual(page.messages.map(\.text), ["hello from dave"])
        // Alice left: not a member any more.
        do {
            _ = try await alice.client.history(of: channel)
            XCTFail("a former member read history")
        } catch let error as ClientError {
            XCTAssertEqual(error.code, .notMember)
        }
        await harness.stop()
    }
}

/// Opens, swallows every frame, never answers.
final class SilentTransport: ClientTransport, @unchecked Sendable {
    let sent = Locked<[[UInt8]]>([])
    let incoming: AsyncStream<WebSocketConnection.Incoming>
    private let continuation: AsyncStream<WebSocketConnection.Incoming>.Continuation

    init() {
        (incoming, continuation) = AsyncStream.makeStream(of: WebSocketConnection.Incoming.self)
    }

    func open(timeout: Double) async throws {}
    func send(_ text: [UInt8]) -> Bool {
        sent.withLock { $0.append(text) }
        return true
    }
    func close() {
        continuation.yield(.closed(code: 1000, reason: ""))
        continuation.finish()
    }
}
