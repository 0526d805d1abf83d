"""Invitations of their own: inviting a tenant id shows the same whether or not it exists.

An invitation was a row of ``nexus_tenant_relationships`` with status
'invited', whose foreign keys to ``nexus_tenants`` made an invitation to an id
that is no tenant impossible to store: the inviter's list (and the relay's
change) showed it when the tenant existed, and nothing when it did not. The
invite form's neutral answer moved the oracle to the list.

``nexus_invitations`` holds them now. Its ``invitee_tenant_id`` has no foreign
key (only its form is checked), so an invitation to any id is stored, shown and
published alike; nothing the inviter can read under RLS says whether a tenant
is behind it, until that tenant answers.

- The inviter's tenant sees and creates its sent invitations; the invitee's
  tenant (when it exists: only its users have its id in their claims) sees
  those addressed to it and may only answer them, once: status from
  'invited' to 'accepted' or 'declined' (``answered_at`` is stamped). Nobody
  else sees them.
- Accepting creates the relationship (status 'active'), through a
  ``SECURITY DEFINER`` trigger with a pinned ``search_path``: the inviter is
  the client if its kind is 'client', else the vendor, as the portal decided.
  A relationship of the pair that exists already (declined, or the other way
  round) becomes active instead, and an open invitation the other way round
  is accepted with it.
- ``nexus_tenant_relationships`` keeps the established relationships (active,
  and the declined ones of before); users no longer write it. Its open
  invitations move here.
- Published to the relay; its policy in portal/relay-policy.toml is its SELECT
  policy.

Downgrading moves the open invitations back to relationships, but for those
to ids that are no tenant (a relationship cannot hold them), which are lost,
like every answered invitation (the relationships they made stay).

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Evaluated once per query (an init plan), as in 0004.
TENANT = "(SELECT public.jwt_nexus_tenant_id())"

ACTIVE_WITH_MY_TENANT = f"""
    EXISTS (
        SELECT 1 FROM public.nexus_tenant_relationships r
         WHERE r.status = 'active'
           AND ((r.client_id = nexus_tenants.id AND r.vendor_id = {TENANT})
             OR (r.vendor_id = nexus_tenants.id AND r.client_id = {TENANT}))
    )"""

# Who may see a tenant: my own, those in an active relationship with mine, and
# those inviting mine, so that an invitation shows who it is from. An
# invitation I sent shows the invitee's name only once accepted.
TENANTS_SELECT = """
    CREATE POLICY tenants_select ON nexus_tenants FOR SELECT TO authenticated
        USING (id = {tenant} OR {active} OR {inviting});
"""
INVITING_NOW = f"""
    EXISTS (
        SELECT 1 FROM public.nexus_invitations i
         WHERE i.status = 'invited' AND i.inviter_tenant_id = nexus_tenants.id
           AND i.invitee_tenant_id = {TENANT}
    )"""
INVITING_BEFORE = f"""
    EXISTS (
        SELECT 1 FROM public.nexus_tenant_relationships r
         WHERE r.status = 'invited' AND r.invited_by_tenant_id = nexus_tenants.id
           AND (r.client_id = {TENANT} OR r.vendor_id = {TENANT})
    )"""

RELATIONSHIP_WRITES_BEFORE = f"""
    CREATE POLICY relationships_insert ON nexus_tenant_relationships FOR INSERT TO authenticated
        WITH CHECK (
            (client_id = {TENANT} OR vendor_id = {TENANT})
            AND invited_by_tenant_id = {TENANT}
            AND status = 'invited');
    CREATE POLICY relationships_update ON nexus_tenant_relationships FOR UPDATE TO authenticated
        USING ((client_id = {TENANT} OR vendor_id = {TENANT}) AND invited_by_tenant_id <> {TENANT})
        WITH CHECK ((client_id = {TENANT} OR vendor_id = {TENANT}) AND invited_by_tenant_id <> {TENANT});
    GRANT INSERT (client_id, vendor_id, invited_by_tenant_id, status) ON nexus_tenant_relationships
        TO authenticated;
    GRANT UPDATE (status) ON nexus_tenant_relationships TO authenticated;
    GRANT USAGE ON SEQUENCE nexus_tenant_relationships_id_seq TO authenticated;
"""

STATUS_CHECK = """
    ALTER TABLE nexus_tenant_relationships
        DROP CONSTRAINT nexus_tenant_relationships_status_check,
        ADD CONSTRAINT nexus_tenant_relationships_status_check CHECK (status IN ({statuses})),
        ALTER COLUMN status SET DEFAULT '{default}';
"""

TABLE = """
    CREATE SEQUENCE nexus_invitations_id_seq;
    CREATE TABLE nexus_invitations (
        id text PRIMARY KEY DEFAULT 'INV-' || lpad(nextval('nexus_invitations_id_seq')::text, 8, '0')
            CHECK (id ~ '^INV-[A-Z0-9]{4,32}$'),
        inviter_tenant_id text NOT NULL REFERENCES nexus_tenants (id),
        -- No foreign key: an invitation to an id that is no tenant is stored
        -- like any other, so that the inviter cannot tell them apart.
        invitee_tenant_id text NOT NULL CHECK (invitee_tenant_id ~ '^TNT-[A-Z0-9]{4,32}$'),
        status text NOT NULL DEFAULT 'invited' CHECK (status IN ('invited', 'accepted', 'declined')),
        created_at timestamptz NOT NULL DEFAULT now(),
        answered_at timestamptz,
        CHECK (inviter_tenant_id <> invitee_tenant_id),
        CHECK ((status = 'invited') = (answered_at IS NULL))
    );
    ALTER SEQUENCE nexus_invitations_id_seq OWNED BY nexus_invitations.id;
    -- One open invitation per pair and direction: inviting again while it is
    -- open changes nothing (the portal inserts ON CONFLICT DO NOTHING).
    CREATE UNIQUE INDEX nexus_invitations_open_idx ON nexus_invitations
        (inviter_tenant_id, invitee_tenant_id) WHERE status = 'invited';
    CREATE INDEX nexus_invitations_inviter_tenant_id_idx ON nexus_invitations (inviter_tenant_id);
    CREATE INDEX nexus_invitations_invitee_tenant_id_idx ON nexus_invitations (invitee_tenant_id);
"""

TRIGGERS = """
    -- An answer is final, and stamped.
    CREATE FUNCTION public.nexus_invitation_answered() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
    BEGIN
        IF NEW.status IS DISTINCT FROM OLD.status THEN
            IF OLD.status <> 'invited' THEN
                -- Concatenated: op.execute's text() would double a percent sign.
                RAISE EXCEPTION USING ERRCODE = 'check_violation',
                    MESSAGE = 'invitation ' || OLD.id || ' was answered already';
            END IF;
            NEW.answered_at := now();
        END IF;
        RETURN NEW;
    END
    $$;
    REVOKE ALL ON FUNCTION public.nexus_invitation_answered() FROM PUBLIC;
    CREATE TRIGGER answered BEFORE UPDATE OF status ON nexus_invitations
        FOR EACH ROW EXECUTE FUNCTION public.nexus_invitation_answered();

    -- The invitee may not write relationships: the relationship is made here,
    -- as the migrating role (around RLS), for exactly the accepted pair.
    CREATE FUNCTION public.nexus_accept_invitation() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        inviter_kind text;
    BEGIN
        -- Both tenants locked, in order: two accepts of one pair (each way
        -- round) make one relationship, not two.
        PERFORM 1 FROM public.nexus_tenants t
          WHERE t.id IN (NEW.inviter_tenant_id, NEW.invitee_tenant_id)
          ORDER BY t.id FOR NO KEY UPDATE;
        SELECT t.kind INTO inviter_kind FROM public.nexus_tenants t
         WHERE t.id = NEW.inviter_tenant_id;
        IF EXISTS (SELECT 1 FROM public.nexus_tenant_relationships r
                    WHERE (r.client_id, r.vendor_id)
                          IN ((NEW.inviter_tenant_id, NEW.invitee_tenant_id),
                              (NEW.invitee_tenant_id, NEW.inviter_tenant_id))) THEN
            UPDATE public.nexus_tenant_relationships r
               SET status = 'active', invited_by_tenant_id = NEW.inviter_tenant_id
             WHERE (r.client_id, r.vendor_id)
                   IN ((NEW.inviter_tenant_id, NEW.invitee_tenant_id),
                       (NEW.invitee_tenant_id, NEW.inviter_tenant_id))
               AND r.status <> 'active';
        ELSE
            INSERT INTO public.nexus_tenant_relationships
                   (client_id, vendor_id, status, invited_by_tenant_id)
            SELECT CASE WHEN inviter_kind = 'client' THEN NEW.inviter_tenant_id
                        ELSE NEW.invitee_tenant_id END,
                   CASE WHEN inviter_kind = 'client' THEN NEW.invitee_tenant_id
                        ELSE NEW.inviter_tenant_id END,
                   'active', NEW.inviter_tenant_id;
        END IF;
        -- An open invitation of the pair the other way round is moot: answered
        -- too (its own run of this trigger finds the relationship, and this
        -- invitation answered).
        UPDATE public.nexus_invitations i SET status = 'accepted'
         WHERE i.inviter_tenant_id = NEW.invitee_tenant_id
           AND i.invitee_tenant_id = NEW.inviter_tenant_id AND i.status = 'invited';
        RETURN NULL;
    END
    $$;
    REVOKE ALL ON FUNCTION public.nexus_accept_invitation() FROM PUBLIC;
    CREATE TRIGGER accepted AFTER UPDATE OF status ON nexus_invitations
        FOR EACH ROW WHEN (OLD.status = 'invited' AND NEW.status = 'accepted')
        EXECUTE FUNCTION public.nexus_accept_invitation();
"""

POLICIES = f"""
    ALTER TABLE nexus_invitations ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
    CREATE POLICY invitations_select ON nexus_invitations FOR SELECT TO authenticated
        USING (inviter_tenant_id = {TENANT} OR invitee_tenant_id = {TENANT});
    CREATE POLICY invitations_insert ON nexus_invitations FOR INSERT TO authenticated
        WITH CHECK (inviter_tenant_id = {TENANT} AND status = 'invited' AND answered_at IS NULL);
    CREATE POLICY invitations_answer ON nexus_invitations FOR UPDATE TO authenticated
        USING (invitee_tenant_id = {TENANT} AND status = 'invited')
        WITH CHECK (invitee_tenant_id = {TENANT} AND status IN ('accepted', 'declined'));
    GRANT SELECT ON nexus_invitations TO authenticated;
    GRANT INSERT (inviter_tenant_id, invitee_tenant_id) ON nexus_invitations TO authenticated;
    GRANT UPDATE (status) ON nexus_invitations TO authenticated;
    GRANT USAGE ON SEQUENCE nexus_invitations_id_seq TO authenticated;
"""

# The open invitations of relationships, and back; the invitee is the side
# that did not invite.
MOVE_OPEN_INVITATIONS = """
    INSERT INTO nexus_invitations (inviter_tenant_id, invitee_tenant_id, created_at)
    SELECT r.invited_by_tenant_id,
           CASE WHEN r.client_id = r.invited_by_tenant_id THEN r.vendor_id ELSE r.client_id END,
           r.created_at
      FROM nexus_tenant_relationships r
     WHERE r.status = 'invited'
     ORDER BY r.created_at, r.id
    ON CONFLICT (inviter_tenant_id, invitee_tenant_id) WHERE status = 'invited' DO NOTHING;
    DELETE FROM nexus_tenant_relationships WHERE status = 'invited';
"""
MOVE_BACK_OPEN_INVITATIONS = """
    INSERT INTO nexus_tenant_relationships
           (client_id, vendor_id, status, invited_by_tenant_id, created_at)
    SELECT CASE WHEN inviter.kind = 'client' THEN i.inviter_tenant_id ELSE i.invitee_tenant_id END,
           CASE WHEN inviter.kind = 'client' THEN i.invitee_tenant_id ELSE i.inviter_tenant_id END,
           'invited', i.inviter_tenant_id, i.created_at
      FROM nexus_invitations i
      JOIN nexus_tenants inviter ON inviter.id = i.inviter_tenant_id
     WHERE i.status = 'invited'
       AND EXISTS (SELECT 1 FROM nexus_tenants t WHERE t.id = i.invitee_tenant_id)
     ORDER BY i.created_at, i.id
    ON CONFLICT (client_id, vendor_id) DO NOTHING;
"""


def upgrade() -> None:
    op.execute("""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles
                            WHERE rolname = current_user AND (rolsuper OR rolbypassrls)) THEN
                RAISE EXCEPTION 'migration 0008: run it as a superuser or a role with BYPASSRLS'
                    USING HINT = 'Its trigger makes relationships around row-level security.';
            END IF;
        END
        $$;
    """)
    op.execute(TABLE)
    op.execute(TRIGGERS)
    op.execute(POLICIES)
    # Published before the open invitations move, so that the move is logged:
    # subscribers see the relationships go and the invitations come.
    op.execute(
        "SELECT relay.publish('public.nexus_invitations', ARRAY['INSERT', 'UPDATE', 'DELETE'], '{}')"
    )
    op.execute(MOVE_OPEN_INVITATIONS)

    op.execute(STATUS_CHECK.format(statuses="'active', 'declined'", default="active"))
    op.execute("""
        DROP POLICY relationships_insert ON nexus_tenant_relationships;
        DROP POLICY relationships_update ON nexus_tenant_relationships;
        REVOKE INSERT, UPDATE ON nexus_tenant_relationships FROM authenticated;
        REVOKE USAGE ON SEQUENCE nexus_tenant_relationships_id_seq FROM authenticated;
        DROP POLICY tenants_select ON nexus_tenants;
    """)
    op.execute(
        TENANTS_SELECT.format(tenant=TENANT, active=ACTIVE_WITH_MY_TENANT, inviting=INVITING_NOW)
    )


def downgrade() -> None:
    op.execute("DROP POLICY tenants_select ON nexus_tenants")
    op.execute(
        TENANTS_SELECT.format(tenant=TENANT, active=ACTIVE_WITH_MY_TENANT, inviting=INVITING_BEFORE)
    )
    op.execute(RELATIONSHIP_WRITES_BEFORE)
    op.execute(STATUS_CHECK.format(statuses="'invited', 'active', 'declined'", default="invited"))
    op.execute(MOVE_BACK_OPEN_INVITATIONS)
    op.execute("SELECT relay.unpublish('public.nexus_invitations')")
    op.execute("""
        DROP TABLE nexus_invitations;
        DROP FUNCTION public.nexus_accept_invitation(), public.nexus_invitation_answered();
    """)
