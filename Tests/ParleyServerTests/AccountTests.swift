import Foundation
import ParleyCrypto
import ParleyProtocol
@testable import ParleyServer
import ParleyStore
import ParleyTestSupport
import XCTest

/// The account handlers (wire protocol §4 and §10 "Accounts") against a real PostgreSQL.
final class AccountTests: XCTestCase {
    private var alice: RSAPrivateKey!
    private var bob: RSAPrivateKey!
    private var harness: AccountHarness!

    override func setUpWithError() throws {
        alice = try AccountKeys.first.get()
        bob = try AccountKeys.second.get()
        harness = try AccountHarness()
    }

    override func tearDown() {
        harness = nil
    }

    private var nowMillis: Int { Int(Date().timeIntervalSince1970 * 1000) }

    /// Asserts `effects` is exactly one `.authenticated` for `session`.
    private func assertAuthenticated(_ effects: [Effect], as session: AccountSession,
                                     file: StaticString = #filePath, line: UInt = #line) {
        guard effects.count == 1, case .authenticated(let userID, let username, let hash, let expiresAt) = effects[0] else {
            return XCTFail("expected one .authenticated effect, got \(effects)", file: file, line: line)
        }
        XCTAssertEqual(userID, session.userID, file: file, line: line)
        XCTAssertEqual(username, session.username, file: file, line: line)
        XCTAssertEqual(hash, session.sessionHash, file: file, line: line)
        XCTAssertEqual(expiresAt, session.sessionExpiresAt, file: file, line: line)
    }

    // MARK: signup → challenge → auth → login

    func testSignupCreatesAccountOnlyWhenTheChallengeIsAnswered() throws {
        let context = harness.connection(1)
        let before = nowMillis
        let issued = try harness.issued(harness.send(
            .signup(Request.Signup(username: "alice", publicKeyDER: alice.publicKey.spkiDER)), on: context))
        XCTAssertEqual(issued.challenge.count, 256)
        XCTAssertEqual(try alice.unwrap(issued.challenge).count, 32)
        // Unix milliseconds, five minutes ahead.
        XCTAssertEqual(Double(issued.expiresAt), Double(before + 300_000), accuracy: 5_000)
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM users").first?.int(0), 0)

        let outcome = try harness.answerChallenge(issued, with: alice, on: context)
        let session = try harness.session(outcome)
        XCTAssertEqual(session.username, "alice")
        XCTAssertEqual(session.token.count, 32)
        XCTAssertEqual(Base64.encodeURL(session.token), session.session)
        XCTAssertEqual(Double(session.sessionExpiresAt), Double(before + 30 * 86_400_000), accuracy: 5_000)
        let passkey = try XCTUnwrap(session.passkey)
        XCTAssertEqual(try Base64.decodeURL(passkey).count, 32)
        XCTAssertFalse(passkey.contains("="))
        assertAuthenticated(outcome.effects, as: session)

        let row = try XCTUnwrap(harness.db.execute(
            "SELECT id::text, username, public_key, key_fingerprint, passkey_hash FROM users").first)
        XCTAssertEqual(try row.string(0), session.userID.string)
        XCTAssertEqual(try row.string(1), "alice")
        XCTAssertEqual(try row.bytes(2), alice.publicKey.spkiDER)
        XCTAssertEqual(try row.bytes(3), alice.publicKey.fingerprint)
        XCTAssertEqual(try row.bytes(4), SHA256.hash(try Base64.decodeURL(passkey)))
        XCTAssertEqual(try harness.db.execute("SELECT user_id::text FROM sessions").first?.string(0), session.userID.string)
    }

    func testAuthAttachesTheSessionToAnotherConnection() throws {
        let session = try harness.signUp("alice", key: alice)
        let outcome = harness.send(.auth(Request.Auth(session: session.session)), on: harness.connection(2))
        guard case .auth(let reply) = try harness.result(outcome) else { return XCTFail("expected auth") }
        XCTAssertEqual(reply.userID, session.userID)
        XCTAssertEqual(reply.username, "alice")
        XCTAssertEqual(reply.sessionExpiresAt, session.sessionExpiresAt)
        assertAuthenticated(outcome.effects, as: session)
    }

    func testLoginWithThePasskeyGivesANewSession() throws {
        let first = try harness.signUp("alice", key: alice)
        let context = harness.connection(7)
        let login = harness.send(.login(Request.Login(username: "alice", passkey: try XCTUnwrap(first.passkey))), on: context)
        guard case .login(let issued) = try harness.result(login) else { return XCTFail("expected login") }
        XCTAssertEqual(try alice.unwrap(issued.challenge).count, 32, "encrypted to the stored key")
        XCTAssertEqual(Double(issued.expiresAt), Double(nowMillis + 300_000), accuracy: 5_000)

        let outcome = try harness.answerChallenge(issued, with: alice, on: context)
        let second = try harness.session(outcome)
        XCTAssertEqual(second.userID, first.userID)
        XCTAssertEqual(second.username, "alice")
        XCTAssertNil(second.passkey, "the passkey is shown once, after signup only")
        XCTAssertNotEqual(second.session, first.session)
        assertAuthenticated(outcome.effects, as: second)
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM sessions").first?.int(0), 2)
        let text = String(decoding: outcome.reply, as: UTF8.self)
        XCTAssertTrue(text.contains("\"session\""))
        XCTAssertFalse(text.contains("\"passkey\""))
    }

    func testSignupAcceptsTheOtherKeySizes() throws {
        for (index, spki) in try AccountFixture.otherSizeKeys().enumerated() {
            let outcome = harness.send(.signup(Request.Signup(username: "big\(index)", publicKeyDER: spki)),
                                       on: harness.connection(1))
            let issued = try harness.issued(outcome)
            XCTAssertEqual(issued.challenge.count, try RSAPublicKey(spkiDER: spki).modulusBytes)
        }
    }

    // MARK: user

    func testUserLookupByNameAndID() throws {
        let session = try harness.signUp("alice", key: alice)
        let signedIn = harness.connection(1, signedInAs: session)
        let before = nowMillis
        for request in [Request.User.username("alice"), .userID(session.userID)] {
            guard case .user(let user) = try harness.result(harness.send(.user(request), on: signedIn)) else {
                return XCTFail("expected user")
            }
            XCTAssertEqual(user.userID, session.userID)
            XCTAssertEqual(user.username, "alice")
            XCTAssertEqual(user.publicKey, alice.publicKey.spkiDER)
            XCTAssertEqual(Double(user.createdAt), Double(before), accuracy: 10_000)
        }
        for request in [Request.User.username("bob"), .username("Alice"), .username("a\u{0}lice"), .userID(ID.random())] {
            harness.assertError(harness.send(.user(request), on: signedIn), .notFound, "\(request)")
        }
    }

    // MARK: signup refusals

    func testInvalidUsernames() throws {
        let key = alice.publicKey.spkiDER
        let names = ["", "ab", "Alice", String(repeating: "a", count: 33), "al ice", "al@ce", "ålice", "alice\u{0}", "ali/ce"]
        for name in names {
            harness.assertError(harness.send(.signup(Request.Signup(username: name, publicKeyDER: key)),
                                             on: harness.connection(1)), .invalidUsername, name)
        }
        for name in ["abc", String(repeating: "z", count: 32), "a_b.c-9"] {
            _ = try harness.issued(harness.send(.signup(Request.Signup(username: name, publicKeyDER: key)),
                                                on: harness.connection(1)))
        }
    }

    func testInvalidKeys() throws {
        let spki = alice.publicKey.spkiDER
        let standard = Base64.encode(spki)
        var texts: [(String, String)] = [
            ("empty", ""),
            ("not base64", "not base64!"),
            ("missing padding", String(Base64.encode(Array(spki.dropLast())).dropLast())),
            ("base64url", Base64.encodeURL(spki)),
            ("with whitespace", " " + standard),
            ("garbage DER", Base64.encode(Array(repeating: 0x30, count: 40))),
            ("truncated SPKI", Base64.encode(Array(spki.dropLast(10)))),
            ("trailing byte", Base64.encode(spki + [0])),
        ]
        for invalid in try AccountFixture.invalidKeys() {
            texts.append((invalid.name, Base64.encode(invalid.spki)))
        }
        XCTAssertGreaterThanOrEqual(texts.count, 12, "the fixture's EC, RSA-PSS, 1024-bit and e=3 keys are included")
        for (name, text) in texts where text != standard {
            harness.assertError(harness.send(.signup(Request.Signup(username: "alice", publicKey: text)),
                                             on: harness.connection(1)), .invalidKey, name)
        }
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM challenges").first?.int(0), 0)
    }

    func testUsernameTakenAtSignup() throws {
        _ = try harness.signUp("alice", key: alice)
        harness.assertError(harness.send(.signup(Request.Signup(username: "alice", publicKeyDER: bob.publicKey.spkiDER)),
                                         on: harness.connection(2)), .usernameTaken)
    }

    func testFirstAnswerWinsTheUsername() throws {
        let first = harness.connection(1), second = harness.connection(2)
        let issuedFirst = try harness.issued(harness.send(
            .signup(Request.Signup(username: "carol", publicKeyDER: alice.publicKey.spkiDER)), on: first))
        let issuedSecond = try harness.issued(harness.send(
            .signup(Request.Signup(username: "carol", publicKeyDER: bob.publicKey.spkiDER)), on: second))

        // The later signup answers first and gets the name.
        let winner = try harness.session(harness.answerChallenge(issuedSecond, with: bob, on: second))
        XCTAssertEqual(winner.username, "carol")
        harness.assertError(try harness.answerChallenge(issuedFirst, with: alice, on: first), .usernameTaken)
        // The losing challenge was used up.
        harness.assertError(try harness.answerChallenge(issuedFirst, with: alice, on: first), .challengeFailed)

        guard case .user(let user) = try harness.result(harness.send(.user(.username("carol")), on: second)) else {
            return XCTFail("expected user")
        }
        XCTAssertEqual(user.publicKey, bob.publicKey.spkiDER)
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM users").first?.int(0), 1)
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM sessions").first?.int(0), 1)
    }

    // MARK: challenge failures

    func testWrongAnswerUsesTheChallengeUp() throws {
        let context = harness.connection(1)
        let issued = try harness.issued(harness.send(
            .signup(Request.Signup(username: "alice", publicKeyDER: alice.publicKey.spkiDER)), on: context))
        var wrong = try harness.answer(issued, with: alice)
        wrong[0] ^= 1
        harness.assertError(harness.send(.challenge(Request.Challenge(challengeID: issued.challengeID, answer: wrong)),
                                         on: context), .challengeFailed)
        harness.assertError(try harness.answerChallenge(issued, with: alice, on: context), .challengeFailed,
                            "the right answer after a wrong one")
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM users").first?.int(0), 0)
    }

    func testSecretItselfIsNotTheAnswer() throws {
        let context = harness.connection(1)
        let issued = try harness.issued(harness.send(
            .signup(Request.Signup(username: "alice", publicKeyDER: alice.publicKey.spkiDER)), on: context))
        let secret = try alice.unwrap(issued.challenge)
        harness.assertError(harness.send(.challenge(Request.Challenge(challengeID: issued.challengeID, answer: secret)),
                                         on: context), .challengeFailed)
    }

    func testForeignConnectionNeitherAnswersNorUsesUpTheChallenge() throws {
        let owner = harness.connection(1)
        let issued = try harness.issued(harness.send(
            .signup(Request.Signup(username: "alice", publicKeyDER: alice.publicKey.spkiDER)), on: owner))
        let otherNumber = harness.connection(2)
        let otherNode = RequestContext(connectionID: 1, nodeID: ID.random())
        for foreign in [otherNumber, otherNode] {
            harness.assertError(try harness.answerChallenge(issued, with: alice, on: foreign), .challengeFailed)
            var wrong = try harness.answer(issued, with: alice)
            wrong[31] ^= 0x80
            harness.assertError(harness.send(.challenge(Request.Challenge(challengeID: issued.challengeID, answer: wrong)),
                                             on: foreign), .challengeFailed)
        }
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM challenges WHERE used_at IS NOT NULL").first?.int(0), 0)
        let session = try harness.session(harness.answerChallenge(issued, with: alice, on: owner))
        XCTAssertEqual(session.username, "alice")
    }

    func testExpiredChallengeFails() throws {
        let context = harness.connection(1)
        let issued = try harness.issued(harness.send(
            .signup(Request.Signup(username: "alice", publicKeyDER: alice.publicKey.spkiDER)), on: context))
        try harness.db.execute("UPDATE challenges SET expires_at = now() - interval '1 second'")
        harness.assertError(try harness.answerChallenge(issued, with: alice, on: context), .challengeFailed)
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM users").first?.int(0), 0)
    }

    func testUnknownChallengeFails() throws {
        let answer = [UInt8](repeating: 7, count: 32)
        harness.assertError(harness.send(.challenge(Request.Challenge(challengeID: ID.random(), answer: answer)),
                                         on: harness.connection(1)), .challengeFailed)
    }

    func testChallengeCannotBeAnsweredTwice() throws {
        let context = harness.connection(1)
        let issued = try harness.issued(harness.send(
            .signup(Request.Signup(username: "alice", publicKeyDER: alice.publicKey.spkiDER)), on: context))
        _ = try harness.session(harness.answerChallenge(issued, with: alice, on: context))
        // The same connection after a logout, i.e. unauthenticated again.
        harness.assertError(try harness.answerChallenge(issued, with: alice, on: context), .challengeFailed)
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM sessions").first?.int(0), 1)
    }

    func testConcurrentAnswersAuthenticateOnce() throws {
        let context = harness.connection(1)
        let login = try harness.signUp("alice", key: alice)
        let issued = try harness.issued(harness.send(
            .login(Request.Login(username: "alice", passkey: try XCTUnwrap(login.passkey))), on: context))
        let answer = try harness.answer(issued, with: alice)
        let connectionString = harness.connectionString
        let service = harness.service
        let codes = AccountLockedList<String>()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            do {
                let db = try PostgresConnection(connectionString: connectionString)
                let outcome = service.handle(.challenge(Request.Challenge(challengeID: issued.challengeID, answer: answer)),
                                             id: "r1", context: context, on: db)
                switch try ServerFrame.decode(outcome.reply) {
                case .result: codes.append("ok")
                case .error(let frame): codes.append(frame.code.rawValue)
                case .event: codes.append("event")
                }
            } catch {
                codes.append("thrown: \(error)")
            }
        }
        XCTAssertEqual(codes.all.sorted(), Array(repeating: "challenge_failed", count: 7) + ["ok"])
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM sessions").first?.int(0), 2)
    }

    // MARK: login failures

    func testLoginFailuresAreIndistinguishable() throws {
        let account = try harness.signUp("alice", key: alice)
        let passkey = try XCTUnwrap(account.passkey)
        let bytes = try Base64.decodeURL(passkey)
        var other = bytes
        other[0] ^= 1
        let attempts: [(String, String, String)] = [
            ("unknown user", "nobody", passkey),
            ("unknown user, bad passkey", "nobody", "x"),
            ("invalid username", "Alice", passkey),
            ("wrong passkey", "alice", Base64.encodeURL(other)),
            ("padded", "alice", passkey + "="),
            ("standard base64", "alice", Base64.encode(bytes)),
            ("standard alphabet", "alice", passkey.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/") + "A"),
            ("31 bytes", "alice", Base64.encodeURL(Array(bytes.dropLast()))),
            ("33 bytes", "alice", Base64.encodeURL(bytes + [0])),
            ("empty", "alice", ""),
            ("whitespace", "alice", passkey + " "),
        ]
        var replies: [String: [UInt8]] = [:]
        for (name, username, text) in attempts {
            let outcome = harness.send(.login(Request.Login(username: username, passkey: text)), on: harness.connection(3))
            harness.assertError(outcome, .authFailed, name)
            replies[name] = outcome.reply
        }
        let reference = try XCTUnwrap(replies["unknown user"])
        for (name, reply) in replies {
            XCTAssertEqual(reply, reference, "\(name) must be byte-identical to an unknown user")
        }
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM challenges WHERE purpose = 'login'").first?.int(0), 0)
        // The right passkey still works afterwards.
        _ = try harness.issued(harness.send(.login(Request.Login(username: "alice", passkey: passkey)), on: harness.connection(3)))
    }

    func testDecoyKeyForFailedLoginsParses() {
        // Without it a failed login would skip the RSA work and answer faster.
        XCTAssertEqual(Handler.decoyKey?.modulusBits, 2048)
    }

    // MARK: authenticated connections

    func testAccountRequestsOnAnAuthenticatedConnectionAreBadRequests() throws {
        let session = try harness.signUp("alice", key: alice)
        let signedIn = harness.connection(1, signedInAs: session)
        let requests: [Request] = [
            .signup(Request.Signup(username: "other", publicKeyDER: bob.publicKey.spkiDER)),
            .login(Request.Login(username: "alice", passkey: try XCTUnwrap(session.passkey))),
            .auth(Request.Auth(session: session.session)),
            .challenge(Request.Challenge(challengeID: ID.random(), answer: [UInt8](repeating: 0, count: 32))),
        ]
        for request in requests {
            harness.assertError(harness.send(request, on: signedIn), .badRequest, "\(request.type)")
        }
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM challenges").first?.int(0), 1, "only the signup's")
    }

    func testAuthenticatedConnectionCannotAnswerItsOwnChallenge() throws {
        let context = harness.connection(1)
        let issued = try harness.issued(harness.send(
            .signup(Request.Signup(username: "bob", publicKeyDER: bob.publicKey.spkiDER)), on: context))
        let alice = try harness.signUp("alice", key: self.alice, connection: 9)
        let signedIn = RequestContext(connectionID: 1, nodeID: harness.nodeID, userID: alice.userID,
                                      sessionHash: alice.sessionHash)
        harness.assertError(try harness.answerChallenge(issued, with: bob, on: signedIn), .badRequest)
        // Refused before the lookup: the challenge is still there for the unauthenticated owner.
        XCTAssertEqual(try harness.session(harness.answerChallenge(issued, with: bob, on: context)).username, "bob")
    }

    // MARK: sessions

    func testLogoutEndsTheSessionEverywhere() throws {
        let session = try harness.signUp("alice", key: alice)
        let outcome = harness.send(.logout, on: harness.connection(1, signedInAs: session))
        guard case .logout = try harness.result(outcome) else { return XCTFail("expected logout") }
        guard outcome.effects.count == 1, case .loggedOut(let hash) = outcome.effects[0] else {
            return XCTFail("expected one .loggedOut effect, got \(outcome.effects)")
        }
        XCTAssertEqual(hash, session.sessionHash)
        XCTAssertEqual(try harness.db.execute("SELECT count(*) FROM sessions").first?.int(0), 0)
        harness.assertError(harness.send(.auth(Request.Auth(session: session.session)), on: harness.connection(2)),
                            .authFailed)
    }

    func testLogoutLeavesOtherSessionsAlone() throws {
        let first = try harness.signUp("alice", key: alice)
        let context = harness.connection(2)
        guard case .login(let issued) = try harness.result(harness.send(
            .login(Request.Login(username: "alice", passkey: try XCTUnwrap(first.passkey))), on: context)) else {
            return XCTFail("expected login")
        }
        let second = try harness.session(harness.answerChallenge(issued, with: alice, on: context))
        _ = try harness.result(harness.send(.logout, on: harness.connection(1, signedInAs: first)))
        harness.assertError(harness.send(.auth(Request.Auth(session: first.session)), on: harness.connection(3)), .authFailed)
        guard case .auth(let reply) = try harness.result(harness.send(.auth(Request.Auth(session: second.session)),
                                                                       on: harness.connection(4))) else {
            return XCTFail("expected auth")
        }
        XCTAssertEqual(reply.userID, first.userID)
    }

    func testExpiredSessionFails() throws {
        let session = try harness.signUp("alice", key: alice)
        try harness.db.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
        harness.assertError(harness.send(.auth(Request.Auth(session: session.session)), on: harness.connection(2)),
                            .authFailed)
    }

    func testMalformedOrUnknownSessionsFail() throws {
        let session = try harness.signUp("alice", key: alice)
        let token = session.token
        let texts = [
            "", "x", session.session + "=", Base64.encode(token), session.session + "A",
            Base64.encodeURL(Array(token.dropLast())), Base64.encodeURL(SHA256.hash(token)),
            Base64.encodeURL(try SecureRandom.bytes(count: 32)), session.session + "\u{0}",
        ]
        for text in texts {
            harness.assertError(harness.send(.auth(Request.Auth(session: text)), on: harness.connection(2)), .authFailed, text)
        }
    }

    // MARK: stored secrets

    func testDatabaseHoldsNoPlaintextSecret() throws {
        let context = harness.connection(1)
        let issued = try harness.issued(harness.send(
            .signup(Request.Signup(username: "alice", publicKeyDER: alice.publicKey.spkiDER)), on: context))
        let signupSecret = try alice.unwrap(issued.challenge)
        let answer = try harness.answer(issued, with: alice)
        let signup = try harness.session(harness.send(
            .challenge(Request.Challenge(challengeID: issued.challengeID, answer: answer)), on: context))
        let passkey = try Base64.decodeURL(try XCTUnwrap(signup.passkey))

        let loginContext = harness.connection(2)
        guard case .login(let loginIssued) = try harness.result(harness.send(
            .login(Request.Login(username: "alice", passkey: try XCTUnwrap(signup.passkey))), on: loginContext)) else {
            return XCTFail("expected login")
        }
        let loginSecret = try alice.unwrap(loginIssued.challenge)
        let login = try harness.session(harness.answerChallenge(loginIssued, with: alice, on: loginContext))

        // What is stored: hashes.
        XCTAssertEqual(try harness.db.execute("SELECT passkey_hash FROM users").first?.bytes(0), SHA256.hash(passkey))
        let tokenHashes = Set(try harness.db.execute("SELECT token_hash FROM sessions").rows.map { try $0.bytes(0) })
        XCTAssertEqual(tokenHashes, [signup.sessionHash, login.sessionHash])
        let answerHash = try harness.db.execute("SELECT answer_hash FROM challenges WHERE id = $1",
                                                [.text(issued.challengeID.string)]).first?.bytes(0)
        XCTAssertEqual(answerHash, SHA256.hash(answer))

        // What is not: any secret, in any spelling, in any column.
        let stored = try harness.accountRowsText()
        XCTAssertTrue(stored.contains(accountHex(alice.publicKey.spkiDER)), "the dump does show bytea columns")
        let secrets = [passkey, signup.token, login.token, signupSecret, loginSecret, answer]
        for secret in secrets {
            for spelling in [accountHex(secret), Base64.encode(secret), Base64.encodeURL(secret)] {
                XCTAssertFalse(stored.contains(spelling), "a secret is stored in the clear")
            }
        }
    }
}
