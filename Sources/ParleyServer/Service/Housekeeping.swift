import ParleyStore

/// Deletes what can never be used again: expired challenges (one is made per signup and
/// login attempt) and expired sessions. Without it both tables only grow. The health
/// thread runs a sweep every `interval` seconds on its own connection; each statement
/// takes at most `batch` rows, so a long backlog is worked off in short transactions.
/// Several nodes sweeping at once is harmless.
enum Housekeeping {
    static let interval = 600.0
    static let batch = 10_000

    static let sweepChallenges = PreparedStatement("sweep_challenges", """
        DELETE FROM challenges WHERE id IN (SELECT id FROM challenges WHERE expires_at < now() LIMIT $1)
        RETURNING 1
        """)
    static let sweepSessions = PreparedStatement("sweep_sessions", """
        DELETE FROM sessions WHERE token_hash IN (SELECT token_hash FROM sessions WHERE expires_at < now() LIMIT $1)
        RETURNING 1
        """)

    /// One sweep: how many challenges and sessions it deleted.
    static func sweep(on db: PostgresConnection, batch: Int = batch) throws -> (challenges: Int, sessions: Int) {
        let challenges = try db.execute(sweepChallenges, [.int(batch)]).rows.count
        let sessions = try db.execute(sweepSessions, [.int(batch)]).rows.count
        return (challenges, sessions)
    }
}
