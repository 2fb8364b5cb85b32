-- Search: by a prefix of the customer's name in any case, and by the tail of an id.
-- customer_key is domain.search_key(customer), the Unicode casefold, computed in Python at
-- insert (lower() is not casefold: "Straße" must be found by "STRASSE"), and for the rows there
-- are by the step the migration runner runs after this file. "C" collation compares bytes,
-- code point order: a prefix is the range [prefix, domain.prefix_end(prefix)) of the index.
ALTER TABLE orders ADD COLUMN customer_key text COLLATE "C";
CREATE INDEX orders_customer ON orders (customer_key, id);
-- The tail of an id is a prefix of the id reversed (id is "C", so is its reverse).
CREATE INDEX orders_id_reversed ON orders (reverse(id));
