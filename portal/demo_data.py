"""Demo data: three tenants, their users, a shared case, payments, notifications.

Loading is idempotent: rows are inserted when missing and never changed, so
what a demo user did survives a restart. It runs as the migrating role, which
must be a superuser or have BYPASSRLS (the tables force row-level security).
"""

from dataclasses import dataclass

import psycopg
from argon2 import PasswordHasher


@dataclass(frozen=True)
class DemoUser:
    id: str
    tenant_id: str
    email: str
    display_name: str
    password: str


TENANTS = (
    ("TNT-ALPHA001", "Alpha Manufacturing", "client"),
    ("TNT-BETA0001", "Beta Services", "vendor"),
    # No relationship with Alpha or Beta: sees none of their data.
    ("TNT-GAMMA001", "Gamma Logistics", "client"),
)

USERS = (
    DemoUser("USR-ALIC0001", "TNT-ALPHA001", "alice@alpha.com", "Alice Archer", "alpha-demo-pass"),
    DemoUser("USR-CARO0001", "TNT-ALPHA001", "carol@alpha.com", "Carol Chen", "alpha-demo-pass"),
    DemoUser("USR-BOB00001", "TNT-BETA0001", "bob@beta.com", "Bob Baker", "beta-demo-pass"),
    DemoUser("USR-GRAC0001", "TNT-GAMMA001", "grace@gamma.com", "Grace Green", "gamma-demo-pass"),
)

ROWS = """
INSERT INTO nexus_tenant_relationships (id, client_id, vendor_id, status, invited_by_tenant_id)
VALUES ('REL-AB000001', 'TNT-ALPHA001', 'TNT-BETA0001', 'active', 'TNT-ALPHA001')
ON CONFLICT DO NOTHING;

INSERT INTO nexus_cases (id, client_id, vendor_id, subject, status)
VALUES ('CASE-AB000001', 'TNT-ALPHA001', 'TNT-BETA0001',
        'Conveyor line 3: quarterly maintenance', 'open')
ON CONFLICT DO NOTHING;

INSERT INTO nexus_case_messages (id, case_id, sender_tenant_id, sender_user_id, body, created_at)
VALUES
  ('MSG-AB00000001', 'CASE-AB000001', 'TNT-ALPHA001', 'USR-ALIC0001',
   'Hi Bob, line 3 is due for its quarterly maintenance. Can your team come next week?',
   now() - interval '2 days'),
  ('MSG-AB00000002', 'CASE-AB000001', 'TNT-BETA0001', 'USR-BOB00001',
   'Hello Alice, Tuesday morning works for us. We will bring the replacement belts.',
   now() - interval '1 day'),
  ('MSG-AB00000003', 'CASE-AB000001', 'TNT-ALPHA001', 'USR-ALIC0001',
   'Tuesday it is. The line will be stopped from 8:00.',
   now() - interval '20 hours')
ON CONFLICT DO NOTHING;

INSERT INTO nexus_payments (id, from_id, to_id, amount, currency, status, reference)
VALUES
  ('PAY-AB000001', 'TNT-ALPHA001', 'TNT-BETA0001', 1250.00, 'EUR', 'pending', 'Q3 maintenance'),
  ('PAY-AB000002', 'TNT-ALPHA001', 'TNT-BETA0001', 480.00, 'EUR', 'paid', 'Replacement belts')
ON CONFLICT DO NOTHING;

INSERT INTO nexus_notifications (id, tenant_id, user_id, notification_type, title, body, priority)
VALUES
  ('NOTIF-AL000001', 'TNT-ALPHA001', 'USR-ALIC0001', 'case_update',
   'Bob replied on CASE-AB000001', 'Tuesday morning works for us.', 'normal'),
  ('NOTIF-AL000002', 'TNT-ALPHA001', NULL, 'payment_pending',
   'Payment PAY-AB000001 awaits approval', '1,250.00 EUR to Beta Services', 'normal'),
  ('NOTIF-BE000001', 'TNT-BETA0001', 'USR-BOB00001', 'case_update',
   'New case CASE-AB000001', 'Conveyor line 3: quarterly maintenance', 'normal'),
  ('NOTIF-GA000001', 'TNT-GAMMA001', 'USR-GRAC0001', 'welcome',
   'Welcome to Nexus', 'Invite a vendor to get started.', 'low')
ON CONFLICT DO NOTHING;
"""


def load(url: str) -> None:
    """Insert the demo rows that are missing from the database at ``url``."""
    hasher = PasswordHasher()
    with psycopg.connect(url) as conn:
        for tenant_id, name, kind in TENANTS:
            conn.execute(
                "INSERT INTO nexus_tenants (id, name, kind) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (tenant_id, name, kind),
            )
        existing = {row[0] for row in conn.execute("SELECT id FROM nexus_users")}
        for user in USERS:
            if user.id in existing:
                continue
            conn.execute(
                "INSERT INTO nexus_users (id, tenant_id, email, display_name, password_hash) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (
                    user.id,
                    user.tenant_id,
                    user.email,
                    user.display_name,
                    hasher.hash(user.password),
                ),
            )
        conn.execute(ROWS)
