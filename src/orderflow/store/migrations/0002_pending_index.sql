-- Pending orders, oldest first: what a trigger claims. Statistics lag behind a burst of claims
-- (autovacuum analyzes a minute later at best); meanwhile they say every order is pending, and
-- the planner walked the primary key, past every order claimed so far, for each batch. A partial
-- index holds only what a claim wants, so the planner takes it whatever the statistics say.
CREATE INDEX orders_pending ON orders (id) WHERE status = 'pending';
