import Foundation
import ParleyCrypto
import ParleyProtocol
import ParleyStore

// Accounts (wire protocol §4, §10 "Accounts"): signup, login, challenge, auth, logout, user.
//
// Secrets never leave these functions in the clear: the database gets SHA-256 hashes of
// passkeys, session tokens and challenge answers, error messages are fixed sentences, and
// nothing here logs.
extension Handler {
    /// The one `auth_failed` sentence of `login`: unknown user, wrong passkey and malformed
    /// passkey must give byte-identical frames (apart from `re`).
    static let loginFailedMessage = "login failed"

    /// Stands in for the account key when a login fails, so that failures do the same RSA
    /// work whether or not the user exists. A fixed 2048-bit public key (parsed once);
    /// nobody holds its private key and nothing wrapped with it leaves the relay.
    static let decoyKey: RSAPublicKey? = {
        let spki = """
            MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxjJUwihc3+IYithPLMHbGoHnpt9+IaFi\
            deWlZmnz3awvUeEos0aAELDLX8UYRxUQR6jQ0TcMAqFwiE0on0DfTaOR4cQX6viRrK87OcPwsYKH\
            QvkQUHWh7VUMLkLgdBb+Tbgt3pyC2vGDzBUZydEiKziGHU7UBMljBh6Q1wwgqus0t8VUlm4Yt9rm\
            sj2HYoP/vq7VI7vybpd9nXdQSl9XW9SGxOhgCiLM8ZgjULrH7tvUYOT2qzJ9qahpiHF1l00mJ5Mg\
            ZT4RhhYDYhWiIBEOTz+BYB7AYwcu+YJOnHKgWgxPDJd1yaIlXYn/dOI5iZ0h2XUwcG+8ng+6Hru2\
            JT5HzQIDAQAB
            """
        return try? RSAPublicKey(spkiDER: Base64.decode(spki))
    }()

    /// Stands in for a stored passkey hash when the user does not exist.
    static let decoyPasskeyHash = [UInt8](repeating: 0, count: SHA256.byteCount)

    // MARK: signup

    func signup(_ request: Request.Signup) throws -> Outcome {
        guard context.userID == nil else { return fail(.badRequest, "already authenticated") }
        guard Limits.isValidUsername(request.username) else {
            return fail(.invalidUsername, "username must be 3 to 32 characters of a-z 0-9 _ . -")
        }
        guard let der = try? Base64.decode(request.publicKey), let key = try? RSAPublicKey(spkiDER: der) else {
            return fail(.invalidKey, "public_key must be base64 of an RSA SPKI (2048, 3072 or 4096 bits, e = 65537)")
        }
        // Checked again when the account is created: the first answer wins.
        if try Queries.user(named: request.username, on: db) != nil {
            return fail(.usernameTaken, "username is taken")
        }
        return try issueChallenge(to: key, purpose: .signup(username: request.username, publicKey: der)) {
            .signup($0)
        }
    }

    // MARK: login

    func login(_ request: Request.Login) throws -> Outcome {
        guard context.userID == nil else { return fail(.badRequest, "already authenticated") }
        // Only the exact unpadded base64url of 32 bytes is a passkey. A malformed one still
        // goes through the same lookup and hashing, so it fails like a wrong one.
        let decoded = try? Base64.decodeURL(request.passkey)
        let passkey = decoded.flatMap { $0.count == Limits.secretBytes ? $0 : nil }
        let presentedHash = SHA256.hash(passkey ?? Self.decoyPasskeyHash)
        // A name outside the format cannot be an account (and may hold a NUL that the
        // store refuses); the format is public, so skipping the query reveals nothing.
        let stored = Limits.isValidUsername(request.username)
            ? try Queries.passkeyHash(username: request.username, on: db) : nil
        let hashMatches = ConstantTime.equals(presentedHash, stored?.1 ?? Self.decoyPasskeyHash)
        guard hashMatches, passkey != nil, let (userID, _) = stored,
              let user = try Queries.user(id: userID, on: db),
              let key = try? RSAPublicKey(spkiDER: user.publicKey)
        else {
            // Equivalent work to a success up to the reply: one RSA-OAEP wrap.
            if let decoy = Self.decoyKey { _ = try? decoy.wrap(SecureRandom.bytes(count: Limits.secretBytes)) }
            return fail(.authFailed, Self.loginFailedMessage)
        }
        return try issueChallenge(to: key, purpose: .login(userID: userID)) { .login($0) }
    }

    /// Makes a 32-byte secret, encrypts it to `key`, stores the hash of the expected answer
    /// for this connection and replies with the ciphertext.
    private func issueChallenge(
        to key: RSAPublicKey, purpose: PendingChallenge.Purpose,
        _ response: (Response.ChallengeIssued) -> Response
    ) throws -> Outcome {
        let secret = try SecureRandom.bytes(count: Limits.secretBytes)
        let ciphertext = try key.wrap(secret)
        let answer = try Base64.decode(ChallengeAnswer.compute(secret: secret))
        let id = ID.random()
        let expiresAt = try storeChallenge(id: id, purpose: purpose, answerHash: SHA256.hash(answer))
        return ok(response(Response.ChallengeIssued(challengeID: id, challenge: ciphertext, expiresAt: expiresAt)))
    }

    // MARK: challenge

    private enum ChallengeResult {
        case failed
        case usernameTaken
        case authenticated(UserRow, passkey: [UInt8]?, sessionExpiresAt: Int)
    }

    func challenge(_ request: Request.Challenge) throws -> Outcome {
        guard context.userID == nil else { return fail(.badRequest, "already authenticated") }
        let answerHash = SHA256.hash(request.answer)
        // Made before the transaction so it stays short; unused when the answer fails.
        let token = try SecureRandom.bytes(count: Limits.secretBytes)
        let tokenHash = SHA256.hash(token)
        let newPasskey = try SecureRandom.bytes(count: Limits.secretBytes)

        let result = try db.transaction { () throws -> ChallengeResult in
            guard let pending = try lockChallenge(request.challengeID) else { return .failed }
            // Right or wrong, an answer from its owner uses the challenge up.
            try useChallenge(request.challengeID)
            guard ConstantTime.equals(answerHash, pending.answerHash) else { return .failed }

            let user: UserRow
            var passkey: [UInt8]?
            switch pending.purpose {
            case .signup(let username, let publicKey):
                let candidate = UserRow(id: UUID(), username: username, publicKey: publicKey,
                                        keyFingerprint: SHA256.hash(publicKey))
                guard let created = try insertUserUnlessTaken(candidate, passkeyHash: SHA256.hash(newPasskey)) else {
                    return .usernameTaken
                }
                user = created
                passkey = newPasskey
            case .login(let userID):
                guard let existing = try Queries.user(id: userID, on: db) else { return .failed }
                user = existing
            }
            let expiresAt = try Queries.insertSession(tokenHash: tokenHash, userID: user.id,
                                                      lifetimeSeconds: configuration.sessionTTLSeconds, on: db)
            return .authenticated(user, passkey: passkey, sessionExpiresAt: Int(expiresAt))
        }

        switch result {
        case .failed:
            return fail(.challengeFailed, "challenge failed")
        case .usernameTaken:
            return fail(.usernameTaken, "username is taken")
        case .authenticated(let user, let passkey, let expiresAt):
            let userID = ID(user.id)
            let response = Response.Challenge(
                userID: userID, username: user.username, session: Base64.encodeURL(token),
                sessionExpiresAt: expiresAt, passkey: passkey.map(Base64.encodeURL))
            return ok(.challenge(response), effects: [
                .authenticated(userID: userID, username: user.username, sessionHash: tokenHash,
                               sessionExpiresAt: expiresAt),
            ])
        }
    }

    // MARK: auth, logout

    func auth(_ request: Request.Auth) throws -> Outcome {
        guard context.userID == nil else { return fail(.badRequest, "already authenticated") }
        guard let token = try? Base64.decodeURL(request.session), token.count == Limits.secretBytes else {
            return fail(.authFailed, "session not valid")
        }
        let tokenHash = SHA256.hash(token)
        guard let (user, expiresAt) = try Queries.session(tokenHash: tokenHash, on: db) else {
            return fail(.authFailed, "session not valid")
        }
        let userID = ID(user.id)
        return ok(.auth(Response.Auth(userID: userID, username: user.username, sessionExpiresAt: Int(expiresAt))),
                  effects: [.authenticated(userID: userID, username: user.username, sessionHash: tokenHash,
                                           sessionExpiresAt: Int(expiresAt))])
    }

    /// Ends the session everywhere. Logging out a session that already expired or ended
    /// still answers `logout`: the outcome the client wants holds either way.
    func logout() throws -> Outcome {
        guard let sessionHash = context.sessionHash else { return fail(.unauthenticated, "authenticate first") }
        try Queries.deleteSession(tokenHash: sessionHash, on: db)
        return ok(.logout, effects: [.loggedOut(sessionHash: sessionHash)])
    }

    // MARK: user

    /// A username outside the format is `not_found` rather than `bad_request`: the field
    /// decodes as the string the contract asks for, no such name can be an account, and
    /// the answer is the same as for any other name without an account.
    func user(_ request: Request.User) throws -> Outcome {
        let found: UserRow?
        switch request {
        case .username(let username):
            found = Limits.isValidUsername(username) ? try Queries.user(named: username, on: db) : nil
        case .userID(let id):
            found = try id.uuid.flatMap { try Queries.user(id: $0, on: db) }
        }
        guard let user = found else { return fail(.notFound, "no such user") }
        return ok(.user(Response.User(userID: ID(user.id), username: user.username, publicKey: user.publicKey,
                                      createdAt: Int(user.createdAt))))
    }
}
