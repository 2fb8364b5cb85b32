-- Search: by a prefix of the customer's name in any case, and by the tail of an id. Both keys
-- are computed in Python (domain.search_key: Unicode casefold, which no SQL function gives;
-- the id reversed, so that a tail is a prefix) at insert, and here for the rows there are
-- (the migration runner lends these two functions to this script). BINARY collation compares
-- UTF-8 bytes, code point order: a prefix is the range [prefix, domain.prefix_end(prefix)).
ALTER TABLE orders ADD COLUMN customer_key TEXT;
ALTER TABLE orders ADD COLUMN id_reversed TEXT;
UPDATE orders SET
    customer_key = orderflow_search_key(json_extract(CAST(head AS TEXT) || '}', '$.customer')),
    id_reversed = orderflow_reversed(id);
CREATE INDEX orders_customer ON orders (customer_key, id);
CREATE INDEX orders_id_reversed ON orders (id_reversed);
