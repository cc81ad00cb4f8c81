//! Who can call Fleetyard, and who an audit entry says did something.

text_enum! {
    /// What a caller is allowed to be.
    pub enum Role {
        /// The infrastructure team: sees and changes everything.
        Admin => "admin",
        /// A donor's staff: sees and edits only their own donor's data.
        Donor => "donor",
        /// A service account (CI, build system, test platform) that asks for capacity.
        Ci => "ci",
        /// The agent on one machine.
        Agent => "agent",
    }
}

text_enum! {
    /// What kind of actor an audit entry records.
    pub enum ActorKind {
        /// A person logged in with a user account.
        User => "user",
        /// A service account token.
        Service => "service",
        /// A machine's agent.
        Agent => "agent",
        /// Fleetyard itself: background jobs, the CLI.
        System => "system",
    }
}
